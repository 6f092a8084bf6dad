//! `ctkmu`: a token's keys kept over time — backup to a file, restore, replication to a peer.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tessera_admin::cli::ctkmu::{Args, Command};
use tessera_admin::session::TokenSession;
use tessera_admin::{eprintln, pin, print, println, Failure, Target};
use tessera_client::ClientError;
use tessera_core::{Rv, SecretBytes};
use tessera_wire::backup::{BackupFile, Lock};
use tessera_wire::share::Share;
use tessera_wire::{BackupLock, BackupUnlock, KeepCommand, Reply};

/// Shortest passphrase the device takes.
const MIN_PASSPHRASE: usize = 12;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("ctkmu: {failure}");
            ExitCode::from(failure.code)
        }
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        Command::Show { file } => show(file),
        Command::Backup {
            slot,
            out,
            passphrase: _,
            shares,
            shares_dir,
            passphrase_file,
            user_pin_file,
        } => backup(
            args.device,
            *slot,
            out,
            shares.as_deref(),
            shares_dir.as_deref(),
            passphrase_file.as_deref(),
            user_pin_file.as_deref(),
        ),
        Command::Restore {
            slot,
            input,
            passphrase_file,
            share_files,
            so_pin_file,
        } => restore(
            args.device,
            *slot,
            input,
            passphrase_file.as_deref(),
            share_files,
            so_pin_file.as_deref(),
        ),
        Command::Replicate {
            slot,
            to_device,
            to_slot,
            so_pin_file,
            to_so_pin_file,
        } => replicate(
            args.device,
            *slot,
            *to_device,
            *to_slot,
            so_pin_file.as_deref(),
            to_so_pin_file.as_deref(),
        ),
    }
}

/// What a return code of a keeping command means to the operator.
/// `shares`: the backup's key is split into shares (rather than under a passphrase).
fn explain(target: &Target, error: ClientError, slot: u64, shares: bool) -> Failure {
    let device = target.number;
    let nothing = "nothing was restored";
    let message = match &error {
        ClientError::Returned(code) => match Rv::from_code(*code) {
            Some(Rv::PinIncorrect) => format!("wrong passphrase: the backup key did not open; {nothing}"),
            // The passphrase opened a key that does not match the file's check value: only
            // an altered header does that. Shares that do not match may be wrong shares.
            Some(Rv::WrappedKeyInvalid) if !shares => format!("the backup file was altered: its key check does not match; {nothing}"),
            Some(Rv::WrappedKeyInvalid) => format!("the shares given do not open this backup (each must be a different custodian's share of this file, and enough of them), or the file was altered; {nothing}"),
            Some(Rv::EncryptedDataInvalid) => format!("the backup file was altered or damaged: its seal does not authenticate; {nothing}"),
            Some(Rv::DataInvalid) => format!("the device refused the file or message as malformed, stale or not answering its request; {nothing}"),
            Some(Rv::ArgumentsBad) => format!("the shares or parameters do not fit this backup; {nothing}"),
            Some(Rv::TokenNotRecognized) => format!("device {device} slot {slot}: the file is for another token type, or this is the Admin token (backups are of application tokens, restored into a token of the same model)"),
            Some(Rv::UserNotLoggedIn) => format!("device {device} slot {slot}: not logged in as the token's user (a backup) or its SO (a restore, a replication)"),
            Some(Rv::PinLenRange) => format!("a passphrase has at least {MIN_PASSPHRASE} characters"),
            Some(Rv::FunctionNotSupported) => format!("device {device} is a node of a cluster, which takes no restore or replica: restore into a single device, then found the cluster from it"),
            Some(Rv::CertNotValidated) => format!("device {device} does not trust the device that wrote this (its identity is not this device's, nor a peer's): add that device's owner certificate with `ctident -a{device} peer add FILE` (docs/backup.md); nothing was restored or copied"),
            Some(Rv::SignatureInvalid) => "the signature of the file or message does not verify: it was altered on its way; nothing was restored or copied".to_string(),
            Some(Rv::NoSessionKeys) => format!("device {device} has no identity, and a backup file is signed by the device's identity key: run `ctident -a{device} gen-selfsigned all` first"),
            Some(Rv::SessionCount) => format!("device {device} has too many replication requests waiting; try again in ten minutes"),
            _ => return target.explain(error),
        },
        _ => return target.explain(error),
    };
    Failure::new(message)
}

fn read_file(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BackupFile, Failure> {
    BackupFile::parse(bytes).map_err(|e| Failure::new(format!("{}: {e}", path.display())))
}

fn show(path: &Path) -> Result<(), Failure> {
    let bytes = read_file(path)?;
    let file = parse(path, &bytes)?;
    let h = &file.header;
    println!("Backup file {}", path.display());
    println!("  fingerprint   {}", BackupFile::fingerprint(&bytes));
    println!("  id            {}", hex::encode(h.id));
    println!(
        "  token         {:?} (serial {}, model {})",
        h.token_label, h.token_serial, h.token_model
    );
    println!("  device        {}", h.device_serial);
    println!(
        "  written       {}",
        tessera_admin::status::clock(h.created)
    );
    match &h.lock {
        Lock::Passphrase { iterations, .. } => println!(
            "  key           one custodian's passphrase (PBKDF2-HMAC-SHA256, {iterations} iterations)"
        ),
        Lock::Shares { threshold, count } => {
            println!("  key           split into {count} shares, any {threshold} restore it")
        }
    }
    println!("  objects       {}", h.manifest.len());
    for e in &h.manifest {
        println!(
            "    {:<12} {:<10} {:<6} label {:?} id {}",
            e.class_name(),
            e.key_type.map(key_type_name).unwrap_or_default(),
            if e.private { "private" } else { "public" },
            e.label,
            if e.id.is_empty() { "-" } else { &e.id }
        );
    }
    Ok(())
}

fn key_type_name(key_type: u64) -> String {
    use tessera_core::ck;
    match key_type as ck::CK_KEY_TYPE {
        ck::CKK_RSA => "RSA".into(),
        ck::CKK_EC => "EC".into(),
        ck::CKK_EC_EDWARDS => "EdDSA".into(),
        ck::CKK_EC_MONTGOMERY => "X25519".into(),
        ck::CKK_AES => "AES".into(),
        ck::CKK_GENERIC_SECRET => "generic".into(),
        ck::CKK_DES3 => "DES3".into(),
        ck::CKK_ML_DSA => "ML-DSA".into(),
        ck::CKK_ML_KEM => "ML-KEM".into(),
        other => format!("0x{other:x}"),
    }
}

fn parse_shares(text: &str) -> Result<(u8, u8), Failure> {
    let bad = || {
        Failure::usage(format!(
            "--shares {text:?}: give M/N, any M of N shares restoring the key, with 2 <= M <= N <= 16 (for example 3/5)"
        ))
    };
    let (m, n) = text.split_once('/').ok_or_else(bad)?;
    let (m, n) = (
        m.trim().parse::<u8>().map_err(|_| bad())?,
        n.trim().parse::<u8>().map_err(|_| bad())?,
    );
    if m < 2 || m > n || n > 16 {
        return Err(bad());
    }
    Ok((m, n))
}

fn so_pin(file: Option<&Path>, slot: u64) -> Result<SecretBytes, Failure> {
    pin::read(file, &format!("SO PIN of the token in slot {slot}"))
}

/// Writes a new file, mode 0600, refusing one that exists (a backup never overwrites).
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| Failure::new(format!("cannot write {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)
}

#[allow(clippy::too_many_arguments)]
fn backup(
    device: usize,
    slot: u64,
    out: &Path,
    shares: Option<&str>,
    shares_dir: Option<&Path>,
    passphrase_file: Option<&Path>,
    user_pin_file: Option<&Path>,
) -> Result<(), Failure> {
    if out.exists() {
        return Err(Failure::usage(format!(
            "{} exists: choose a new file name (a backup never overwrites a file)",
            out.display()
        )));
    }
    let split = shares.map(parse_shares).transpose()?;
    if let (Some((_, n)), Some(dir)) = (split, shares_dir) {
        for k in 1..=n {
            let path = share_path(dir, k, n);
            if path.exists() {
                return Err(Failure::usage(format!(
                    "{} exists: give an empty directory for the shares",
                    path.display()
                )));
            }
        }
    }
    let lock = match split {
        Some((threshold, count)) => BackupLock::Shares { threshold, count },
        None => {
            let passphrase = pin::read_new(passphrase_file, "backup passphrase")?;
            if passphrase.len() < MIN_PASSPHRASE {
                return Err(Failure::new(format!(
                    "a backup passphrase has at least {MIN_PASSPHRASE} characters; that one has {}",
                    passphrase.len()
                )));
            }
            BackupLock::Passphrase(passphrase)
        }
    };
    let target = Target::open(device)?;
    let pin = pin::read(
        user_pin_file,
        &format!("user PIN of the token in slot {slot}"),
    )?;
    let session = TokenSession::login(&target, slot, false, &pin)?;
    let reply = session
        .keep("sealing the token's objects", KeepCommand::Backup { lock })
        .map_err(|e| explain(&target, e, slot, split.is_some()))?;
    let Reply::Backup(written) = reply else {
        return Err(Failure::new("the device answered the backup wrongly"));
    };
    let Some((threshold, count)) = split else {
        write_file(out, &written)?;
        println!("The backup key is protected by the passphrase: keep it apart from the file.");
        return Ok(());
    };
    match shares_dir {
        Some(dir) => {
            // The shares first: a file is never left without its shares.
            for (k, share) in written.shares.iter().enumerate() {
                write_new(&share_path(dir, k as u8 + 1, count), share.expose())?;
            }
            write_file(out, &written)?;
            println!(
                "{count} shares written to {} (share-K-of-{count}.txt); any {threshold} restore the backup. Give each custodian one.",
                dir.display()
            );
        }
        None => {
            write_file(out, &written)?;
            println!("The backup key is split into {count} shares; any {threshold} restore it. Give each custodian one line:");
            for (k, share) in written.shares.iter().enumerate() {
                print!("  custodian {}: ", k + 1);
                println!("{}", String::from_utf8_lossy(share.expose()));
            }
        }
    }
    Ok(())
}

/// Writes the backup file and says what it holds and what was left out.
fn write_file(out: &Path, written: &tessera_wire::BackupWritten) -> Result<(), Failure> {
    write_new(out, &written.file)?;
    println!(
        "Backed up {} objects to {} (fingerprint {}).",
        written.objects,
        out.display(),
        BackupFile::fingerprint(&written.file)
    );
    if !written.refused.is_empty() {
        println!(
            "Left out ({}), as their attributes forbid a backup to a file:",
            written.refused.len()
        );
        for line in &written.refused {
            println!("  {line}");
        }
    }
    Ok(())
}

fn share_path(dir: &Path, k: u8, n: u8) -> PathBuf {
    dir.join(format!("share-{k}-of-{n}.txt"))
}

/// A custodian's share, checked at once against the file (checksum, backup, not given before).
fn check_share(
    text: SecretBytes,
    file: &BackupFile,
    given: &[u8],
    whose: &str,
) -> Result<(u8, SecretBytes), Failure> {
    let share = Share::parse(text.expose()).map_err(|e| Failure::new(format!("{whose}: {e}")))?;
    if share.backup[..] != file.header.id[..8] {
        return Err(Failure::new(format!(
            "{whose} is a share of another backup ({}), not of this file ({})",
            hex::encode(share.backup),
            hex::encode(&file.header.id[..8])
        )));
    }
    if given.contains(&share.index) {
        return Err(Failure::new(format!(
            "{whose} is share {} again: each custodian gives a different share",
            share.index
        )));
    }
    Ok((share.index, text))
}

fn restore(
    device: usize,
    slot: u64,
    input: &Path,
    passphrase_file: Option<&Path>,
    share_files: &[PathBuf],
    so_pin_file: Option<&Path>,
) -> Result<(), Failure> {
    let bytes = read_file(input)?;
    let file = parse(input, &bytes)?;
    let split = matches!(file.header.lock, Lock::Shares { .. });
    let unlock = match file.header.lock {
        Lock::Passphrase { .. } => {
            if !share_files.is_empty() {
                return Err(Failure::usage(
                    "this backup is protected by a passphrase, not shares: give --passphrase-file or type it",
                ));
            }
            BackupUnlock::Passphrase(pin::read(passphrase_file, "backup passphrase")?)
        }
        Lock::Shares { threshold, count } => {
            let mut given = Vec::new();
            let mut shares = Vec::new();
            if share_files.is_empty() {
                println!(
                    "This backup needs {threshold} of its {count} shares: each custodian types theirs in turn."
                );
                while shares.len() < threshold as usize {
                    let whose = format!("custodian {}", shares.len() + 1);
                    let text = pin::read(None, &format!("Share of {whose}"))?;
                    match check_share(text, &file, &given, &whose) {
                        Ok((index, text)) => {
                            given.push(index);
                            shares.push(text);
                        }
                        Err(failure) => eprintln!("ctkmu: {failure}; try again"),
                    }
                }
            } else {
                for path in share_files {
                    let text = pin::read(Some(path), "share")?;
                    let (index, text) = check_share(
                        text,
                        &file,
                        &given,
                        &format!("the share in {}", path.display()),
                    )?;
                    given.push(index);
                    shares.push(text);
                }
                if shares.len() < threshold as usize {
                    return Err(Failure::new(format!(
                        "this backup needs {threshold} of its {count} shares; {} given, nothing was restored",
                        shares.len()
                    )));
                }
            }
            BackupUnlock::Shares(shares)
        }
    };
    let target = Target::open(device)?;
    let pin = so_pin(so_pin_file, slot)?;
    let session = TokenSession::login(&target, slot, true, &pin)?;
    let reply = session
        .keep(
            "opening the backup and storing its objects",
            KeepCommand::Restore {
                file: bytes,
                unlock,
            },
        )
        .map_err(|e| explain(&target, e, slot, split))?;
    if let Reply::Number(count) = reply {
        println!(
            "Restored {count} objects from {} (token {:?}, serial {}) into the token in slot {slot} of device {device}.",
            input.display(),
            file.header.token_label,
            file.header.token_serial
        );
    }
    Ok(())
}

fn replicate(
    device: usize,
    slot: u64,
    to_device: usize,
    to_slot: u64,
    so_pin_file: Option<&Path>,
    to_so_pin_file: Option<&Path>,
) -> Result<(), Failure> {
    if device == to_device {
        return Err(Failure::usage(
            "--to-device is this device: a replica goes to another device of the server list",
        ));
    }
    let from = Target::open(device)?;
    let to = Target::open(to_device)?;
    let from_pin = so_pin(so_pin_file, slot)?;
    let to_pin = pin::read(
        to_so_pin_file,
        &format!("SO PIN of the token in slot {to_slot} of device {to_device}"),
    )?;
    let receiver = TokenSession::login(&to, to_slot, true, &to_pin)?;
    let sender = TokenSession::login(&from, slot, true, &from_pin)?;
    let Reply::Bytes(request) = receiver
        .keep("making a replication request", KeepCommand::ReplicaRequest)
        .map_err(|e| explain(&to, e, to_slot, false))?
    else {
        return Err(Failure::new("the receiving device answered wrongly"));
    };
    let Reply::Bytes(replica) = sender
        .keep(
            "sealing the token's objects for the peer",
            KeepCommand::Replicate { request },
        )
        .map_err(|e| explain(&from, e, slot, false))?
    else {
        return Err(Failure::new("the sending device answered wrongly"));
    };
    let Reply::Number(count) = receiver
        .keep("taking the replica", KeepCommand::AcceptReplica { replica })
        .map_err(|e| explain(&to, e, to_slot, false))?
    else {
        return Err(Failure::new("the receiving device answered wrongly"));
    };
    println!(
        "Replicated {count} objects from the token in slot {slot} of device {device} to the token in slot {to_slot} of device {to_device}."
    );
    Ok(())
}
