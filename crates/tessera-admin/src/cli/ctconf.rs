//! The command line of `ctconf`.

use std::path::PathBuf;

use clap::Parser;

/// Administer a Tessera HSM device: show it, set its security flags, manage its slots and
/// tokens, read its event log, set its clock, tamper it.
///
/// The device is chosen by its number in ET_HSM_NETCLIENT_SERVERLIST (-a, default 0), local or
/// on the network. On a device whose Admin token was never set up, ctconf first asks for the ASO
/// PIN and the Administrator PIN (twice each). Every change needs the Administrator PIN, asked
/// without echo or read from --pin-file; a PIN is never accepted as an argument.
///
/// Examples:
///
///   ctconf                         first-time set-up if needed, then the status of device 0
///
///   ctconf -a1 -v                  verbose status of device 1
///
///   ctconf -fcw --pin-file p.txt   set flags No Public Crypto and Weak mechanisms
///
///   ctconf -f0                     clear all flags (Default Mode)
///
///   ctconf -n0 --label payments    initialise the token in slot 0 (asks for its SO PIN)
///
///   ctconf -c2                     add two user slots; ctconf -d3 --yes deletes slot 3
///
///   ctconf -e                      show the event log and check its chain
///
///   ctconf --channels              list secure-messaging channels; --terminate-channel 7 ends one
///
///   ctconf --tamper --yes          erase every token, PIN and flag, like a hardware tamper
///
///   ctconf --check-config          every configuration item, where it comes from, and mistakes
#[derive(Parser, Debug)]
#[command(name = "ctconf", version, verbatim_doc_comment)]
pub struct Args {
    /// Device number in the server list (position in ET_HSM_NETCLIENT_SERVERLIST); without other
    /// actions, show that device.
    #[arg(
        short = 'a',
        long = "device",
        value_name = "DEVICE",
        default_value_t = 0
    )]
    pub device: usize,

    /// Set the security flags: letters of e n u c t i a N U p d E w b q l, or F (= a c l n t u);
    /// the new set replaces the old; 0 clears all.
    #[arg(short = 'f', long = "flags", value_name = "LETTERS")]
    pub flags: Option<String>,

    /// Verbose status: also flag letters, Admin token, event log size and every slot.
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// Initialise the token in this slot (label from --label, SO PIN from --so-pin-file or asked).
    #[arg(short = 'n', long = "init-token", value_name = "SLOT")]
    pub init_token: Option<u64>,

    /// Label for -n (up to 32 characters).
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,

    /// Add this many user slots.
    #[arg(short = 'c', long = "add-slots", value_name = "N")]
    pub add_slots: Option<u64>,

    /// Delete this user slot and its token (asks for confirmation; --yes for scripts).
    #[arg(short = 'd', long = "delete-slot", value_name = "SLOT")]
    pub delete_slot: Option<u64>,

    /// Show the event log and check its integrity.
    #[arg(short = 'e', long = "events")]
    pub events: bool,

    /// Purge the event log (one entry records the purge).
    #[arg(short = 'p', long = "purge-events")]
    pub purge_events: bool,

    /// Set the device clock from this host's clock.
    #[arg(short = 't', long = "set-clock")]
    pub set_clock: bool,

    /// Set the transport mode: 0 none, 1 single shot, 2 continuous.
    #[arg(short = 'm', long = "transport-mode", value_name = "0|1|2")]
    pub transport_mode: Option<u8>,

    /// List the secure-messaging channels: id, peer, age, messages, key generation, policy.
    #[arg(long)]
    pub channels: bool,

    /// Terminate a secure-messaging channel by id, or `all`; its application gets
    /// CKR_SESSION_CLOSED and its next C_OpenSession makes a new channel.
    #[arg(long, value_name = "ID|all")]
    pub terminate_channel: Option<String>,

    /// On a node of a cluster: remove the member with this serial (see the status view's
    /// members). The cluster key is rotated without it: the other members get the new key,
    /// everything in etcd is sealed again under it, and the removed device is never admitted
    /// again. Asks for confirmation; --yes for scripts. Example: ctconf --remove-member 4416795495
    #[arg(long, value_name = "SERIAL")]
    pub remove_member: Option<String>,

    /// Software tamper: erase all tokens, objects, PINs and flags as a hardware tamper does
    /// (identity keys survive). Asks for confirmation; --yes for scripts.
    #[arg(long)]
    pub tamper: bool,

    /// Check the configuration without changing anything: every item with its value and the
    /// level it came from (environment, user file, system file, default), each device of the
    /// server list with its serial and SMPR, and the mistakes that are otherwise ignored
    /// (unknown or malformed item names, an SMPR for a serial no device has). Exit code 1 if
    /// there is a mistake.
    #[arg(long)]
    pub check_config: bool,

    /// Answer yes to confirmations (-d, --tamper, and -f with l or F: Mode Locked, which only
    /// a tamper undoes).
    #[arg(long)]
    pub yes: bool,

    /// File whose first line is the Administrator PIN.
    #[arg(long, value_name = "PATH")]
    pub pin_file: Option<PathBuf>,

    /// First-time set-up: file whose first line is the new ASO PIN.
    #[arg(long, value_name = "PATH")]
    pub aso_pin_file: Option<PathBuf>,

    /// First-time set-up: file whose first line is the new Administrator PIN.
    #[arg(long, value_name = "PATH")]
    pub admin_pin_file: Option<PathBuf>,

    /// For -n: file whose first line is the new token's SO PIN.
    #[arg(long, value_name = "PATH")]
    pub so_pin_file: Option<PathBuf>,
}

impl Args {
    /// Whether the command line asks for an action (else ctconf shows the device).
    pub fn has_change(&self) -> bool {
        self.flags.is_some()
            || self.init_token.is_some()
            || self.add_slots.is_some()
            || self.delete_slot.is_some()
            || self.events
            || self.purge_events
            || self.set_clock
            || self.transport_mode.is_some()
            || self.tamper
            || self.channels
            || self.terminate_channel.is_some()
            || self.remove_member.is_some()
    }
}
