//! The command line of `ctident`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Manage the identity of Tessera devices and the certificates this client trusts.
///
/// Every device proves itself with its identity certificate (PIC), signed by itself or by an
/// owner certificate (POC). Keys are made inside the device and never leave it. Changes need the
/// Administrator PIN (asked without echo, or --pin-file); show, export and trust do not.
///
/// Examples:
///
///   ctident gen-selfsigned all              a POC and a PIC signed by it, on device 0
///
///   ctident -a1 sign-device 0               device 1's owner key signs device 0's new PIK
///
///   ctident request --out pik.csr           offline CA, step 1: the PIK is pending
///
///   ctident -a1 sign-request --in pik.csr --out pic.pem     step 2, on the CA device
///
///   ctident import --in pic.pem             step 3: the PIC (and its chain) into device 0
///
///   ctident export chain --out hsm.pem      the PIC and its chain as PEM
///
///   ctident trust add --from-device --owner --yes           trust device 0's owner (POC)
///
///   ctident trust list                      what this user and the system trust
#[derive(Parser, Debug)]
#[command(name = "ctident", version, verbatim_doc_comment)]
pub struct Args {
    /// Device number in the server list (ET_HSM_NETCLIENT_SERVERLIST).
    #[arg(short = 'a', long = "device", default_value_t = 0, global = true)]
    pub device: usize,

    /// File whose first line is the Administrator PIN.
    #[arg(long, value_name = "PATH", global = true)]
    pub pin_file: Option<PathBuf>,

    /// First-time set-up of a device: file with the new ASO PIN.
    #[arg(long, value_name = "PATH", global = true)]
    pub aso_pin_file: Option<PathBuf>,

    /// First-time set-up of a device: file with the new Administrator PIN.
    #[arg(long, value_name = "PATH", global = true)]
    pub admin_pin_file: Option<PathBuf>,

    /// Answer yes to confirmations.
    #[arg(long, global = true)]
    pub yes: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `ctident`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate keys and self-signed certificates: `all` (a POC and a PIC signed by it),
    /// `pic` (a self-signed PIC), `poc` (an owner key and POC, pending until it signs a PIK).
    /// Example: ctident gen-selfsigned all --curve p384, or --algorithm ml-dsa-87 for a
    /// post-quantum identity (ML-DSA certificates, the IETF LAMPS identifiers).
    GenSelfsigned {
        /// What to generate.
        what: What,
        /// Key algorithm: p521 (default), p384, p256 (ECDSA), ml-dsa-65, ml-dsa-87 (ML-DSA).
        #[arg(long, visible_alias = "algorithm", default_value = "p521")]
        curve: String,
        /// Replace existing keys (asks for confirmation; --yes for scripts).
        #[arg(long)]
        replace: bool,
    },
    /// Offline CA, step 1: make a new PIK and write its certificate signing request; the PIK is
    /// pending until `import`. Example: ctident request --out pik.csr
    Request {
        /// Where to write the request (PEM).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Key algorithm of the new PIK: p521 (default), p384, p256, ml-dsa-65, ml-dsa-87.
        #[arg(long, visible_alias = "algorithm", default_value = "p521")]
        curve: String,
        /// Replace a working identity (asks for confirmation).
        #[arg(long)]
        replace: bool,
    },
    /// Offline CA, step 2: this device's owner key signs a request; writes the PIC followed by
    /// this device's POC. Example: ctident -a1 sign-request --in pik.csr --out pic.pem
    SignRequest {
        /// The request (PEM or DER).
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Where to write the PIC and its chain (PEM).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Offline CA, step 3: import the signed PIC for the pending PIK (refused if it does not
    /// match). The file's first certificate is the PIC, the others its chain.
    /// Example: ctident import --in pic.pem
    Import {
        /// The PIC, optionally followed by its chain (PEM or DER).
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// A separate chain file (PEM).
        #[arg(long, value_name = "FILE")]
        chain: Option<PathBuf>,
    },
    /// Online CA: this device's owner key signs a new PIK of TARGET (another device of the
    /// server list). Example: ctident -a1 sign-device 0 --target-pin-file admin0.pin
    SignDevice {
        /// The device that gets the new identity.
        target: usize,
        /// File with TARGET's Administrator PIN (else asked).
        #[arg(long, value_name = "PATH")]
        target_pin_file: Option<PathBuf>,
        /// Key algorithm of TARGET's new PIK: p521 (default), p384, p256, ml-dsa-65, ml-dsa-87.
        #[arg(long, visible_alias = "algorithm", default_value = "p521")]
        curve: String,
        /// Replace TARGET's working identity (asks for confirmation).
        #[arg(long)]
        replace: bool,
    },
    /// Show the state of each key and certificate: subject, serial, validity, fingerprints.
    /// Example: ctident -a1 show
    Show,
    /// Write the PIC, the POC, or the chain (PIC and issuers) as PEM.
    /// Example: ctident export poc --out owner.pem
    Export {
        /// What to export.
        what: Export,
        /// File to write (standard output if absent).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Devices this device trusts (HSM-to-HSM): add, list, remove.
    #[command(subcommand)]
    Peer(Peer),
    /// The client trust store: add, list, remove.
    #[command(subcommand)]
    Trust(Trust),
    /// Known devices: what the library recorded of the device at each server-list entry after
    /// its first authenticated channel (serial, identity, whether it required a channel). A
    /// recorded entry is only talked to through a channel to that device; after a legitimate
    /// change (new identity, another device at the address), forget the entry.
    #[command(subcommand, name = "known-devices")]
    KnownDevices(Known),
}

/// `ctident known-devices`: the records of the devices this client has met.
#[derive(Subcommand, Debug)]
pub enum Known {
    /// List the records of both levels. Example: ctident known-devices list
    List,
    /// Forget an entry, so that the next channel records it afresh.
    /// Example: ctident known-devices forget 10.0.0.5:12396
    Forget {
        /// The server-list entry, as ET_HSM_NETCLIENT_SERVERLIST writes it.
        entry: String,
        /// The system's file rather than this user's.
        #[arg(long)]
        system: bool,
    },
    /// Provision a record before first contact, so that even the first contact is
    /// authenticated. Example:
    /// ctident known-devices add 10.0.0.5:12396 --serial 5711537307 --identity sha256:9f86…
    /// (--identity none --clear for a device without identity, allowed in the clear).
    Add {
        /// The server-list entry.
        entry: String,
        /// The device's serial number.
        #[arg(long)]
        serial: String,
        /// sha256:HEX of its PIC (`ctident show` prints the fingerprint), or none.
        #[arg(long)]
        identity: String,
        /// The device requires a channel (recorded as `required` rather than `used`).
        #[arg(long, conflicts_with = "clear")]
        required: bool,
        /// A device without identity, talked to in the clear (needs --identity none).
        #[arg(long)]
        clear: bool,
        /// The system's file rather than this user's.
        #[arg(long)]
        system: bool,
    },
}

/// What `gen-selfsigned` makes.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum What {
    /// A POC and a PIC signed by it.
    All,
    /// A self-signed PIC.
    Pic,
    /// An owner key and POC, pending until it signs a PIK.
    Poc,
}

/// What `export` writes.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Export {
    /// The device's identity certificate.
    Pic,
    /// The owner certificate that signed it.
    Poc,
    /// The PIC followed by its chain.
    Chain,
}

/// `ctident peer`: the devices this device trusts (HSM to HSM).
#[derive(Subcommand, Debug)]
pub enum Peer {
    /// Trust another device's PIC or POC. Example: ctident peer add other-hsm.pem --yes
    Add {
        /// The certificate (PEM or DER).
        file: PathBuf,
    },
    /// List the trusted peers. Example: ctident peer list
    List,
    /// Stop trusting a peer, by fingerprint prefix. Example: ctident peer remove 3F:A2:9C
    Remove {
        /// At least 4 hex digits of the SHA-256 fingerprint.
        fingerprint: String,
    },
}

/// `ctident trust`: the certificates this client trusts.
#[derive(Subcommand, Debug)]
pub enum Trust {
    /// Add a certificate (asks for confirmation after showing subject, serial and SHA-256
    /// fingerprint). Example: ctident trust add owner.pem --system --yes
    Add {
        /// The certificate (PEM or DER); omit with --from-device.
        file: Option<PathBuf>,
        /// Take the certificate from the device chosen with -a: its PIC, or with --owner the
        /// owner certificate that signed it.
        #[arg(long)]
        from_device: bool,
        /// With --from-device: the issuer (POC) rather than the PIC.
        #[arg(long)]
        owner: bool,
        /// The system store rather than this user's.
        #[arg(long)]
        system: bool,
    },
    /// List trusted certificates (both stores unless --user or --system).
    /// Example: ctident trust list --user
    List {
        /// Only this user's store.
        #[arg(long)]
        user: bool,
        /// Only the system store.
        #[arg(long)]
        system: bool,
    },
    /// Remove a certificate by fingerprint prefix. Example: ctident trust remove 3FA29C
    Remove {
        /// At least 4 hex digits of the SHA-256 fingerprint.
        fingerprint: String,
        /// From the system store rather than this user's.
        #[arg(long)]
        system: bool,
    },
}
