//! `ctconf`: device administration with the ProtectToolkit option syntax.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tessera_admin::{eprintln, pin, print, println, status, AdminSession, Failure, Target};
use tessera_core::flags;
use tessera_wire::{AdminCommand, Reply};

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
struct Args {
    /// Device number in the server list (position in ET_HSM_NETCLIENT_SERVERLIST); without other
    /// actions, show that device.
    #[arg(
        short = 'a',
        long = "device",
        value_name = "DEVICE",
        default_value_t = 0
    )]
    device: usize,

    /// Set the security flags: letters of e n u c t i a N U p d E w b q l, or F (= a c l n t u);
    /// the new set replaces the old; 0 clears all.
    #[arg(short = 'f', long = "flags", value_name = "LETTERS")]
    flags: Option<String>,

    /// Verbose status: also flag letters, Admin token, event log size and every slot.
    #[arg(short = 'v', long)]
    verbose: bool,

    /// Initialise the token in this slot (label from --label, SO PIN from --so-pin-file or asked).
    #[arg(short = 'n', long = "init-token", value_name = "SLOT")]
    init_token: Option<u64>,

    /// Label for -n (up to 32 characters).
    #[arg(long, value_name = "LABEL")]
    label: Option<String>,

    /// Add this many user slots.
    #[arg(short = 'c', long = "add-slots", value_name = "N")]
    add_slots: Option<u64>,

    /// Delete this user slot and its token (asks for confirmation; --yes for scripts).
    #[arg(short = 'd', long = "delete-slot", value_name = "SLOT")]
    delete_slot: Option<u64>,

    /// Show the event log and check its integrity.
    #[arg(short = 'e', long = "events")]
    events: bool,

    /// Purge the event log (one entry records the purge).
    #[arg(short = 'p', long = "purge-events")]
    purge_events: bool,

    /// Set the device clock from this host's clock.
    #[arg(short = 't', long = "set-clock")]
    set_clock: bool,

    /// Set the transport mode: 0 none, 1 single shot, 2 continuous.
    #[arg(short = 'm', long = "transport-mode", value_name = "0|1|2")]
    transport_mode: Option<u8>,

    /// List the secure-messaging channels: id, peer, age, messages, key generation, policy.
    #[arg(long)]
    channels: bool,

    /// Terminate a secure-messaging channel by id, or `all`; its application gets
    /// CKR_SESSION_CLOSED and its next C_OpenSession makes a new channel.
    #[arg(long, value_name = "ID|all")]
    terminate_channel: Option<String>,

    /// On a node of a cluster: remove the member with this serial (see the status view's
    /// members). The cluster key is rotated without it: the other members get the new key,
    /// everything in etcd is sealed again under it, and the removed device is never admitted
    /// again. Asks for confirmation; --yes for scripts. Example: ctconf --remove-member 4416795495
    #[arg(long, value_name = "SERIAL")]
    remove_member: Option<String>,

    /// Software tamper: erase all tokens, objects, PINs and flags as a hardware tamper does
    /// (identity keys survive). Asks for confirmation; --yes for scripts.
    #[arg(long)]
    tamper: bool,

    /// Check the configuration without changing anything: every item with its value and the
    /// level it came from (environment, user file, system file, default), each device of the
    /// server list with its serial and SMPR, and the mistakes that are otherwise ignored
    /// (unknown or malformed item names, an SMPR for a serial no device has). Exit code 1 if
    /// there is a mistake.
    #[arg(long)]
    check_config: bool,

    /// Answer yes to confirmations (-d, --tamper, and -f with l or F: Mode Locked, which only
    /// a tamper undoes).
    #[arg(long)]
    yes: bool,

    /// File whose first line is the Administrator PIN.
    #[arg(long, value_name = "PATH")]
    pin_file: Option<PathBuf>,

    /// First-time set-up: file whose first line is the new ASO PIN.
    #[arg(long, value_name = "PATH")]
    aso_pin_file: Option<PathBuf>,

    /// First-time set-up: file whose first line is the new Administrator PIN.
    #[arg(long, value_name = "PATH")]
    admin_pin_file: Option<PathBuf>,

    /// For -n: file whose first line is the new token's SO PIN.
    #[arg(long, value_name = "PATH")]
    so_pin_file: Option<PathBuf>,
}

impl Args {
    fn has_change(&self) -> bool {
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

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("ctconf: {failure}");
            ExitCode::from(failure.code)
        }
    }
}

/// This command line, as the operator could type it again (arguments quoted where needed).
fn command_line() -> String {
    let quoted = std::env::args().skip(1).map(|arg| {
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c));
        match plain {
            true => arg,
            false => format!("'{}'", arg.replace('\'', r"'\''")),
        }
    });
    std::iter::once("ctconf".to_string())
        .chain(quoted)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Flags that make the device require a secure channel are set only once this client has
/// made one: otherwise every later change, clearing the flags included, would be refused.
/// A device without identity is left to refuse such flags itself (with the command to run).
fn check_channel_first(
    target: &Target,
    current: &tessera_wire::DeviceStatus,
    bits: u64,
) -> Result<(), Failure> {
    let requires = tessera_channel::Policy::from_device_flags(bits).requires_channel();
    if !requires || !current.identity {
        return Ok(());
    }
    target.check_channel().map_err(|failure| {
        Failure::new(format!(
            "not setting the flags ({}): device {} would then require a secure channel, and this client cannot make one, so every later change (even -f0) would be refused. {}",
            flags::describe(bits),
            target.number,
            failure.message
        ))
    })
}

fn run(args: &Args) -> Result<u8, Failure> {
    if args.check_config {
        return tessera_admin::check::run();
    }
    // Check what can be checked before touching the device.
    let new_flags = match &args.flags {
        Some(letters) => Some(flags::parse(letters).map_err(|bad| {
            Failure::usage(format!(
                "unknown flag letter {bad:?}; valid letters are {} (or 0 to clear)",
                flags::valid_letters()
            ))
        })?),
        None => None,
    };
    if let Some(mode) = args.transport_mode {
        if mode > 2 {
            return Err(Failure::usage(format!(
                "transport mode {mode}: use 0 (none), 1 (single shot) or 2 (continuous)"
            )));
        }
    }
    let target = Target::open(args.device)?;
    if !args.has_change() && args.aso_pin_file.is_none() && !pin::can_prompt() {
        // A look at a device that was never set up needs no set-up: nothing can be asked here.
        let current = target.status()?;
        if !current.admin_ready {
            print!("{}", status::render(&current, args.verbose));
            println!(
                "Device {} needs set-up: run `ctconf -a{}` on a terminal (it asks for the ASO and Administrator PINs), or add --aso-pin-file FILE --admin-pin-file FILE",
                args.device, args.device
            );
            return Ok(0);
        }
    }
    let current = tessera_admin::session::ensure_admin_ready(
        &target,
        args.aso_pin_file.as_deref(),
        args.admin_pin_file.as_deref(),
    )?;
    if !args.has_change() {
        print!("{}", status::render(&current, args.verbose));
        return Ok(0);
    }
    let admin_pin = tessera_admin::session::admin_pin(
        args.pin_file.as_deref(),
        args.admin_pin_file.as_deref(),
    )?;
    // Mode Locked and the identity requirement are enforced (and logged) by the device.
    let terminate = match args.terminate_channel.as_deref() {
        None => None,
        Some("all") => Some(None),
        Some(id) => Some(Some(id.parse::<u64>().map_err(|_| {
            Failure::usage(format!(
                "--terminate-channel {id:?}: give a channel id (see --channels) or all"
            ))
        })?)),
    };
    let token_so_pin = match args.init_token {
        Some(_) => Some(pin::read_new(args.so_pin_file.as_deref(), "token SO PIN")?),
        None => None,
    };
    if let Some(slot) = args.delete_slot {
        pin::confirm(
            &format!(
                "Delete slot {slot} of device {} and every object in its token?",
                args.device
            ),
            args.yes,
        )?;
    }
    if let Some(serial) = &args.remove_member {
        pin::confirm(
            &format!(
                "Remove device {serial} from the cluster of device {}: rotate the cluster key without it, never to admit it again?",
                args.device
            ),
            args.yes,
        )?;
    }
    if args.tamper {
        pin::confirm(
            &format!(
                "Tamper device {}: erase every token, object, PIN and flag?",
                args.device
            ),
            args.yes,
        )?;
    }
    // A change this client could not make through the channel it would need is refused
    // before anything is asked.
    if let Some(bits) = new_flags {
        check_channel_first(&target, &current, bits)?;
    }
    let locking = new_flags.is_some_and(|bits| bits & flags::MODE_LOCKED != 0);
    if locking {
        pin::confirm_or(
            &format!(
                "Set Mode Locked on device {} (serial {})? Only a tamper undoes it: until then no flag can change, -f0 included, and a tamper (ctconf --tamper) erases every token, PIN and flag.",
                args.device, current.info.serial
            ),
            args.yes,
            &format!("if that is what you want, run `{} --yes`", command_line()),
        )?;
    }
    let session = AdminSession::login(&target, &current, &admin_pin)?;
    let mut code = 0;
    if let Some(bits) = new_flags {
        session.run(AdminCommand::SetFlags(bits))?;
        println!("Security Mode set to: {}", flags::describe(bits));
        if locking {
            println!("Mode Locked: only a tamper (ctconf --tamper) can change the flags now.");
        }
    }
    if let (Some(slot), Some(so_pin)) = (args.init_token, token_so_pin) {
        // No --label: a blank label, as C_InitToken pads it.
        let label = args.label.clone().unwrap_or_default();
        if label.len() > 32 {
            return Err(Failure::usage(format!(
                "label {label:?} is longer than 32 bytes"
            )));
        }
        session.run(AdminCommand::InitToken {
            slot,
            label: label.into_bytes(),
            so_pin,
        })?;
        println!("Token in slot {slot} initialised.");
    }
    if let Some(count) = args.add_slots {
        session.run(AdminCommand::AddSlots(count))?;
        println!("{count} {} added.", status::plural(count, "slot", "slots"));
    }
    if let Some(slot) = args.delete_slot {
        session.run(AdminCommand::DeleteSlot(slot))?;
        println!("Slot {slot} deleted.");
    }
    if args.set_clock {
        let now = tessera_core::time::now();
        session.run(AdminCommand::SetClock(now))?;
        println!("Adapter clock set to {}.", status::clock(now));
    }
    if let Some(mode) = args.transport_mode {
        session.run(AdminCommand::SetTransportMode(mode))?;
        println!("Transport mode set to {}.", status::transport_mode(mode));
    }
    if args.events {
        if let Reply::Events(events, problem, checked) = session.run(AdminCommand::Events)? {
            print!("{}", status::render_events(&events));
            for line in &checked {
                println!("Checked: {line}");
            }
            match problem {
                None => println!("Event log integrity: OK ({} entries)", events.len()),
                Some(problem) => {
                    eprintln!("ctconf: event log integrity check FAILED: {problem}");
                    code = 3;
                }
            }
        }
    }
    if args.channels {
        if let Reply::Channels(channels) = session.run(AdminCommand::Channels)? {
            print!("{}", status::render_channels(&channels));
        }
    }
    if let Some(which) = terminate {
        if let Some(id) = which {
            // The device refuses an id it does not know with CKR_ARGUMENTS_BAD: say which.
            let listed = session.run(AdminCommand::Channels)?;
            let known = matches!(&listed, Reply::Channels(list) if list.iter().any(|c| c.id == id));
            if !known {
                return Err(Failure::new(format!(
                    "no channel has id {id} on device {}; `ctconf --channels` lists them",
                    args.device
                )));
            }
        }
        if let Reply::Number(count) = session.run(AdminCommand::TerminateChannels(which))? {
            println!("{count} channel(s) terminated.");
        }
    }
    if let Some(serial) = &args.remove_member {
        session.run(AdminCommand::RemoveMember(serial.clone()))?;
        println!(
            "Device {serial} removed from the cluster; the cluster key was rotated without it."
        );
    }
    if args.purge_events {
        session.run(AdminCommand::PurgeEvents)?;
        println!("Event log purged.");
    }
    if args.tamper {
        session.run(AdminCommand::Tamper)?;
        println!(
            "Device {} tampered: tokens, PINs and flags erased; run ctconf to set it up again.",
            args.device
        );
        return Ok(code);
    }
    if args.verbose {
        print!("{}", status::render(&target.status()?, true));
    }
    Ok(code)
}
