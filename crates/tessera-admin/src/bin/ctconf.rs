//! `ctconf`: device administration with the ProtectToolkit option syntax.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tessera_admin::cli::ctconf::Args;
use tessera_admin::{eprintln, pin, print, println, status, AdminSession, Failure, Target};
use tessera_core::flags;
use tessera_wire::{AdminCommand, Reply};

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
        session.run_showing(
            "initialising the token",
            AdminCommand::InitToken {
                slot,
                label: label.into_bytes(),
                so_pin,
            },
        )?;
        println!("Token in slot {slot} initialised.");
    }
    if let Some(count) = args.add_slots {
        session.run(AdminCommand::AddSlots(count))?;
        println!("{count} {} added.", status::plural(count, "slot", "slots"));
    }
    if let Some(slot) = args.delete_slot {
        session.run_showing(
            "deleting the slot and its token",
            AdminCommand::DeleteSlot(slot),
        )?;
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
        if let Reply::Events(events, problem, checked) =
            session.run_showing("reading and checking the event log", AdminCommand::Events)?
        {
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
        session.run_showing(
            "removing the member and rotating the cluster key",
            AdminCommand::RemoveMember(serial.clone()),
        )?;
        println!(
            "Device {serial} removed from the cluster; the cluster key was rotated without it."
        );
    }
    if args.purge_events {
        session.run_showing("purging the event log", AdminCommand::PurgeEvents)?;
        println!("Event log purged.");
    }
    if args.tamper {
        session.run_showing("erasing every token, PIN and flag", AdminCommand::Tamper)?;
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
