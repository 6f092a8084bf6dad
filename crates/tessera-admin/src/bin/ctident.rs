//! `ctident`: owner and identity keys and certificates of Tessera devices, and the client trust
//! store.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tessera_admin::cli::ctident::{Args, Command, Export, Known, Peer, Trust, What};
use tessera_admin::session::{admin_pin, ensure_admin_ready};
use tessera_admin::{eprintln, pin, print, println, status, AdminSession, Failure, Target};
use tessera_identity::inspect::CertificateInfo;
use tessera_identity::pem;
use tessera_identity::trust::{Level, TrustStore};
use tessera_wire::{AdminCommand, Call, Identity, IdentityTarget, KeyState, Reply};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("ctident: {failure}");
            ExitCode::from(failure.code)
        }
    }
}

fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?;
    let certificates = pem::decode_all(&bytes, "CERTIFICATE")
        .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
    for (index, der) in certificates.iter().enumerate() {
        CertificateInfo::parse(der)
            .map_err(|e| Failure::new(format!("{} (certificate {index}): {e}", path.display())))?;
    }
    Ok(certificates)
}

fn write_file(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))
}

fn key_state(state: KeyState, curve: &Option<String>, pending: &str) -> String {
    let curve = curve.as_deref().unwrap_or("-");
    match state {
        KeyState::Absent => "none".into(),
        KeyState::Pending => format!("pending ({pending}), {curve}"),
        KeyState::Ready => format!("ready, {curve}"),
    }
}

fn identity(target: &Target) -> Result<Identity, Failure> {
    match target.call(Call::Identity)? {
        Reply::Identity(identity) => Ok(identity),
        other => Err(Failure::new(format!("unexpected answer {other:?}"))),
    }
}

fn login<'a>(
    args: &Args,
    target: &'a Target,
    pin_file: Option<&Path>,
) -> Result<AdminSession<'a>, Failure> {
    let status = ensure_admin_ready(
        target,
        args.aso_pin_file.as_deref(),
        args.admin_pin_file.as_deref(),
    )?;
    let pin = admin_pin(pin_file, args.admin_pin_file.as_deref())?;
    AdminSession::login(target, &status, &pin)
}

fn run(args: &Args) -> Result<(), Failure> {
    if let Command::Trust(trust) = &args.command {
        return run_trust(args, trust);
    }
    if let Command::KnownDevices(known) = &args.command {
        return run_known(known);
    }
    let target = Target::open(args.device)?;
    match &args.command {
        Command::GenSelfsigned {
            what,
            curve,
            replace,
        } => {
            let target_kind = match what {
                What::All => IdentityTarget::All,
                What::Pic => IdentityTarget::Pic,
                What::Poc => IdentityTarget::Poc,
            };
            if *replace {
                pin::confirm(
                    &format!("Replace the {what:?} keys of device {}?", args.device),
                    args.yes,
                )?;
            }
            let session = login(args, &target, args.pin_file.as_deref())?;
            let command = AdminCommand::GenerateIdentity {
                target: target_kind,
                curve: curve.clone(),
                replace: *replace,
            };
            session.run_showing("generating the keys and certificates", command)?;
            println!("Generated {what:?} on device {}.", args.device);
            if !matches!(what, What::Poc) {
                identity_changed(&target)?;
            }
            show(&identity(&target)?);
        }
        Command::Request {
            out,
            curve,
            replace,
        } => {
            if *replace {
                pin::confirm(
                    &format!("Replace the identity of device {}?", args.device),
                    args.yes,
                )?;
            }
            let session = login(args, &target, args.pin_file.as_deref())?;
            let Reply::Bytes(request) = session.run(AdminCommand::PikRequest {
                curve: curve.clone(),
                replace: *replace,
            })?
            else {
                return Err(Failure::new("unexpected answer to a PIK request"));
            };
            write_file(out, &pem::encode("CERTIFICATE REQUEST", &request))?;
            println!("Wrote the request for device {}'s new PIK to {}; the PIK is pending until `ctident import`.", args.device, out.display());
        }
        Command::SignRequest { input, out } => {
            let bytes = std::fs::read(input)
                .map_err(|e| Failure::new(format!("cannot read {}: {e}", input.display())))?;
            let request = pem::decode_all(&bytes, "CERTIFICATE REQUEST")
                .map_err(|e| Failure::new(format!("{}: {e}", input.display())))?
                .remove(0);
            let session = login(args, &target, args.pin_file.as_deref())?;
            let Reply::Bytes(pic) = session.run(AdminCommand::SignRequest(request))? else {
                return Err(Failure::new("unexpected answer to a signing request"));
            };
            // The POC goes with the PIC (an empty certificate would be a broken chain).
            let poc = identity(&target)?.poc.ok_or_else(|| {
                Failure::new(format!(
                    "device {} signed the request but has no POC to send with it; create one \
                     with `ctident gen-selfsigned poc`",
                    args.device
                ))
            })?;
            write_file(
                out,
                &(pem::encode("CERTIFICATE", &pic) + &pem::encode("CERTIFICATE", &poc)),
            )?;
            println!(
                "Signed:\n  {}\nWrote the PIC and this device's POC to {}.",
                status::describe_certificate(&pic),
                out.display()
            );
        }
        Command::Import { input, chain } => {
            let mut certificates = read_certificates(input)?;
            if let Some(chain) = chain {
                certificates.extend(read_certificates(chain)?);
            }
            let pic = certificates.remove(0);
            let session = login(args, &target, args.pin_file.as_deref())?;
            session.run(AdminCommand::ImportPic {
                pic,
                chain: certificates,
            })?;
            println!("Imported the PIC into device {}.", args.device);
            identity_changed(&target)?;
            show(&identity(&target)?);
        }
        Command::SignDevice {
            target: other,
            target_pin_file,
            curve,
            replace,
        } => {
            if *other == args.device {
                return Err(Failure::usage("the signing device and the target must differ; use gen-selfsigned all on one device"));
            }
            if *replace {
                pin::confirm(
                    &format!("Replace the identity of device {other}?"),
                    args.yes,
                )?;
            }
            let ca = login(args, &target, args.pin_file.as_deref())?;
            let subject = Target::open(*other)?;
            let subject_session = login(args, &subject, target_pin_file.as_deref())?;
            let Reply::Bytes(request) = subject_session.run(AdminCommand::PikRequest {
                curve: curve.clone(),
                replace: *replace,
            })?
            else {
                return Err(Failure::new("unexpected answer to a PIK request"));
            };
            let Reply::Bytes(pic) = ca.run(AdminCommand::SignRequest(request))? else {
                return Err(Failure::new("unexpected answer to a signing request"));
            };
            let poc = identity(&target)?
                .poc
                .ok_or_else(|| Failure::new("the signing device has no POC"))?;
            subject_session.run(AdminCommand::ImportPic {
                pic,
                chain: vec![poc],
            })?;
            println!(
                "Device {}'s owner key signed device {other}'s new identity.",
                args.device
            );
            identity_changed(&subject)?;
            show(&identity(&subject)?);
        }
        Command::Show => show(&identity(&target)?),
        Command::Export { what, out } => {
            let identity = identity(&target)?;
            let missing = |what: &str| {
                Failure::new(format!(
                    "device {} has no {what}; create one with `ctident gen-selfsigned`",
                    args.device
                ))
            };
            let text = match what {
                Export::Pic => {
                    pem::encode("CERTIFICATE", &identity.pic.ok_or_else(|| missing("PIC"))?)
                }
                Export::Poc => {
                    pem::encode("CERTIFICATE", &identity.poc.ok_or_else(|| missing("POC"))?)
                }
                Export::Chain => {
                    let mut text =
                        pem::encode("CERTIFICATE", &identity.pic.ok_or_else(|| missing("PIC"))?);
                    for der in &identity.chain {
                        text.push_str(&pem::encode("CERTIFICATE", der));
                    }
                    text
                }
            };
            match out {
                Some(path) => write_file(path, &text)?,
                None => print!("{text}"),
            }
        }
        Command::Peer(peer) => {
            let session = login(args, &target, args.pin_file.as_deref())?;
            match peer {
                Peer::Add { file } => {
                    let der = read_certificates(file)?.remove(0);
                    println!("  {}", status::describe_certificate(&der));
                    pin::confirm(
                        &format!("Make device {} trust this certificate?", args.device),
                        args.yes,
                    )?;
                    session.run(AdminCommand::AddPeer(der))?;
                    println!("Peer added.");
                }
                Peer::List => {
                    if let Reply::Certificates(peers) = session.run(AdminCommand::Peers)? {
                        if peers.is_empty() {
                            println!("Device {} trusts no peer.", args.device);
                        }
                        for der in peers {
                            println!("  {}", status::describe_certificate(&der));
                        }
                    }
                }
                Peer::Remove { fingerprint } => {
                    session.run(AdminCommand::RemovePeer(fingerprint.clone())).map_err(|f| {
                        Failure::new(format!("{f} (no single peer has fingerprint {fingerprint}; see `ctident peer list`)"))
                    })?;
                    println!("Peer removed.");
                }
            }
        }
        // Trust store and known-devices commands need no device; handled before connecting.
        Command::Trust(_) | Command::KnownDevices(_) => {}
    }
    Ok(())
}

fn show(identity: &Identity) {
    println!("Device serial            : {}", identity.serial);
    println!(
        "Identity key (PIK)       : {}",
        key_state(
            identity.pik,
            &identity.pik_curve,
            "waiting for its signed PIC"
        )
    );
    match &identity.pic {
        Some(pic) => println!(
            "Identity certificate     : {}",
            status::describe_certificate(pic)
        ),
        None => println!("Identity certificate     : none"),
    }
    for der in &identity.chain {
        println!(
            "Issuer                   : {}",
            status::describe_certificate(der)
        );
    }
    println!(
        "Owner key (POK)          : {}",
        key_state(
            identity.pok,
            &identity.pok_curve,
            "has not signed a PIK yet"
        )
    );
    match &identity.poc {
        Some(poc) => println!(
            "Owner certificate        : {}",
            status::describe_certificate(poc)
        ),
        None => println!("Owner certificate        : none"),
    }
}

/// The device's PIC was replaced by this command: this user's known-devices record of its
/// entry (made with the old identity) is forgotten, so that the next channel records the new
/// one; other users and machines that recorded it must do the same.
fn identity_changed(target: &Target) -> Result<(), Failure> {
    let config = tessera_config::Config::load().map_err(|e| Failure::new(e.to_string()))?;
    let files = tessera_client::known::KnownDevices::from_config(&config);
    let entry = target.device.address().entry();
    let level = tessera_client::known::Level::User;
    if files
        .forget(level, &entry)
        .map_err(|e| Failure::new(e.to_string()))?
    {
        println!(
            "The identity changed: forgot the known-devices record of {entry} in {}. Other users and machines that talk to it must run `ctident known-devices forget {entry}` (and trust the new identity if needed).",
            files.shown(level)
        );
    }
    Ok(())
}

fn run_known(known: &Known) -> Result<(), Failure> {
    use tessera_client::known::{ChannelUse, KnownDevice, KnownDevices, Level as KnownLevel};
    let config = tessera_config::Config::load().map_err(|e| Failure::new(e.to_string()))?;
    let files = KnownDevices::from_config(&config);
    let level = |system: bool| {
        if system {
            KnownLevel::System
        } else {
            KnownLevel::User
        }
    };
    match known {
        Known::List => {
            for (level, name) in [(KnownLevel::User, "user"), (KnownLevel::System, "system")] {
                println!("{name}: {}", files.shown(level));
                for record in files.list(level).map_err(|e| Failure::new(e.to_string()))? {
                    println!("  {}", record.line());
                }
            }
        }
        Known::Forget { entry, system } => {
            let level = level(*system);
            if !files
                .forget(level, entry)
                .map_err(|e| Failure::new(e.to_string()))?
            {
                return Err(Failure::new(format!(
                    "{} has no record of {entry:?}; `ctident known-devices list` shows the entries",
                    files.shown(level)
                )));
            }
            println!("forgot {entry} in {}", files.shown(level));
        }
        Known::Add {
            entry,
            serial,
            identity,
            required,
            clear,
            system,
        } => {
            let identity = match identity.as_str() {
                "none" => None,
                text => Some(
                    text.strip_prefix("sha256:")
                        .unwrap_or(text)
                        .replace(':', "")
                        .to_ascii_lowercase(),
                ),
            };
            let channel = match (*clear, *required) {
                (true, _) => ChannelUse::Clear,
                (false, true) => ChannelUse::Required,
                (false, false) => ChannelUse::Used,
            };
            let record = KnownDevice {
                entry: entry.clone(),
                serial: serial.clone(),
                identity,
                channel,
            };
            // The file's own rules judge the record before anything is written.
            let level = level(*system);
            files
                .record(level, &record)
                .map_err(|e| Failure::new(format!("not recorded: {e}")))?;
            println!("recorded {} in {}", record.line(), files.shown(level));
        }
    }
    Ok(())
}

fn run_trust(args: &Args, trust: &Trust) -> Result<(), Failure> {
    let config = tessera_config::Config::load().map_err(|e| Failure::new(e.to_string()))?;
    let level = |system: bool| if system { Level::System } else { Level::User };
    match trust {
        Trust::Add {
            file,
            from_device,
            owner,
            system,
        } => {
            let der = match (file, from_device) {
                (Some(file), false) => read_certificates(file)?.remove(0),
                (None, true) => {
                    let identity = identity(&Target::open(args.device)?)?;
                    let wanted = if *owner {
                        identity.chain.first().cloned().or(identity.poc)
                    } else {
                        identity.pic
                    };
                    wanted.ok_or_else(|| {
                        Failure::new(format!("device {} has no such certificate", args.device))
                    })?
                }
                _ => {
                    return Err(Failure::usage(
                        "give a certificate file or --from-device (not both)",
                    ))
                }
            };
            let store = TrustStore::open(&config, level(*system));
            println!("  {}", status::describe_certificate(&der));
            pin::confirm(
                &format!(
                    "Trust this certificate ({:?} store {})?",
                    store.level,
                    store.dir.display()
                ),
                args.yes,
            )?;
            let path = store.add(&der).map_err(|e| Failure::new(e.to_string()))?;
            println!("Trusted: {}", path.display());
        }
        Trust::List { user, system } => {
            let levels: &[Level] = match (user, system) {
                (true, false) => &[Level::User],
                (false, true) => &[Level::System],
                _ => &[Level::User, Level::System],
            };
            for level in levels {
                let store = TrustStore::open(&config, *level);
                let entries = store.list().map_err(|e| Failure::new(e.to_string()))?;
                println!(
                    "{level:?} trust store {} ({} {})",
                    store.dir.display(),
                    entries.len(),
                    status::plural(entries.len(), "certificate", "certificates")
                );
                for (_, der) in entries {
                    println!("  {}", status::describe_certificate(&der));
                }
            }
        }
        Trust::Remove {
            fingerprint,
            system,
        } => {
            let store = TrustStore::open(&config, level(*system));
            let removed = store
                .remove(fingerprint)
                .map_err(|e| Failure::new(e.to_string()))?;
            println!(
                "Removed from the {:?} trust store:\n  {}",
                store.level,
                status::describe_certificate(&removed)
            );
        }
    }
    Ok(())
}
