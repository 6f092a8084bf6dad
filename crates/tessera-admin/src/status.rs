//! The device status view of `ctconf -a` (lines of `Label : value`).

use tessera_core::flags;
use tessera_wire::DeviceStatus;

pub use tessera_core::time::clock;

/// The name of a transport mode.
pub fn transport_mode(mode: u8) -> &'static str {
    match mode {
        0 => "None",
        1 => "Single Shot",
        2 => "Continuous",
        _ => "Unknown",
    }
}

/// `one` or `many` as `count` asks: `1 certificate`, `2 certificates`, `0 channels`.
pub fn plural<'a>(count: impl TryInto<u64>, one: &'a str, many: &'a str) -> &'a str {
    match count.try_into() {
        Ok(1) => one,
        _ => many,
    }
}

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    out.push_str(&format!("{label:<22}: {value}\n"));
}

/// The status lines; `verbose` adds the Admin token, identity, event log and every slot.
pub fn render(status: &DeviceStatus, verbose: bool) -> String {
    let mut out = String::new();
    let info = &status.info;
    line(&mut out, "Model", &info.model);
    line(&mut out, "Serial Number", &info.serial);
    line(&mut out, "Manufacturer", &info.manufacturer);
    line(
        &mut out,
        "Firmware Version",
        format!("{}.{}", info.firmware.major, info.firmware.minor),
    );
    line(&mut out, "Adapter Clock", clock(status.clock));
    line(&mut out, "Security Mode", flags::describe(status.flags));
    line(
        &mut out,
        "Transport Mode",
        transport_mode(status.transport_mode),
    );
    line(&mut out, "Open Session Count", status.sessions);
    line(&mut out, "Requests Served", status.requests);
    line(&mut out, "Number of Slots", info.slot_count);
    match &status.identity_fingerprint {
        Some(fingerprint) => line(
            &mut out,
            "Identity",
            format!("present, PIC SHA-256 {fingerprint}"),
        ),
        None => line(&mut out, "Identity", "none (create one with ctident)"),
    }
    if !verbose && !status.admin_ready {
        line(&mut out, "Admin Token", "not set up");
    }
    if let Some(cluster) = &status.cluster {
        render_cluster(&mut out, cluster, status.clock, &info.serial);
    }
    if verbose {
        line(
            &mut out,
            "Security Flags",
            format!("0x{:08X} ({})", status.flags, flags::letters(status.flags)),
        );
        line(
            &mut out,
            "Admin Token",
            if status.admin_ready {
                "set up"
            } else {
                "not set up"
            },
        );
        line(&mut out, "Event Log Entries", status.events);
        for slot in &status.slots {
            let state = match (slot.initialized, slot.user_pin) {
                (false, _) => "not initialised".to_string(),
                (true, false) => format!("\"{}\", user PIN not set", slot.label),
                (true, true) => format!("\"{}\"", slot.label),
            };
            line(
                &mut out,
                &format!("Slot {}", slot.slot),
                format!(
                    "{state}, {} {}, {} {}",
                    slot.objects,
                    plural(slot.objects, "object", "objects"),
                    slot.sessions,
                    plural(slot.sessions, "session", "sessions")
                ),
            );
        }
        line(
            &mut out,
            &format!("Slot {}", info.slot_count - 1),
            "Admin slot",
        );
    }
    out
}

/// A member is healthy when it reported within this many seconds (nodes report every second).
pub const MEMBER_HEALTHY_WITHIN: u64 = 5;

/// The cluster lines: its name, then one line per member with its health.
fn render_cluster(out: &mut String, cluster: &tessera_wire::ClusterStatus, now: u64, me: &str) {
    let count = cluster.members.len();
    let title = match &cluster.unavailable {
        Some(reason) => format!("{} (members unknown: {reason})", cluster.name),
        None => format!(
            "{}, {count} {}",
            cluster.name,
            plural(count, "member", "members")
        ),
    };
    line(out, "Cluster", title);
    for member in &cluster.members {
        let ago = now.saturating_sub(member.last_seen);
        let health = if ago <= MEMBER_HEALTHY_WITHIN {
            "healthy".to_string()
        } else {
            format!("not heard from for {ago} s")
        };
        let this = if member.serial == me {
            ", this node"
        } else {
            ""
        };
        line(
            out,
            &format!("Member {}", member.serial),
            format!(
                "{health}, key epoch {}, applied revision {}, serving since {}{this}",
                member.epoch,
                member.applied,
                clock(member.since)
            ),
        );
    }
}

/// The event log, one line per entry: sequence, time, role, kind, detail.
pub fn render_events(events: &[tessera_wire::Event]) -> String {
    events
        .iter()
        .map(|event| {
            format!(
                "{:>6}  {}  {:<13}  {:<24}  {}\n",
                event.sequence,
                clock(event.time),
                event.role,
                event.kind,
                event.detail
            )
        })
        .collect()
}

/// The secure-messaging channels as a table, with a count line.
pub fn render_channels(channels: &[tessera_wire::ChannelSummary]) -> String {
    let mut out = format!(
        "{:>8}  {:<28}  {:>8}  {:>9}  {:>10}  policy\n",
        "channel", "peer", "age (s)", "messages", "generation"
    );
    for c in channels {
        out += &format!(
            "{:>8}  {:<28}  {:>8}  {:>9}  {:>10}  {}\n",
            c.id, c.peer, c.age, c.messages, c.generation, c.policy
        );
    }
    out + &format!(
        "{} {}\n",
        channels.len(),
        plural(channels.len(), "channel", "channels")
    )
}

/// A certificate for the operator to compare: subject, issuer, serial, device serial,
/// validity and SHA-256 fingerprint, on indented lines after the first.
pub fn describe_certificate(der: &[u8]) -> String {
    match tessera_identity::inspect::CertificateInfo::parse(der) {
        Ok(info) => format!(
            "subject {}\n    issuer {}\n    serial {}, device {}\n    valid {} to {}\n    SHA-256 {}",
            info.subject,
            info.issuer,
            info.certificate_serial,
            info.serial_number.as_deref().unwrap_or("-"),
            clock(info.not_before.max(0) as u64),
            clock(info.not_after.max(0) as u64),
            info.fingerprint
        ),
        Err(e) => format!("unreadable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clock_format() {
        assert_eq!(super::clock(1_795_740_245), "2026-11-27 00:44:05 UTC");
    }

    #[test]
    fn counts_take_the_singular_for_one_only() {
        let certificates =
            |n: usize| format!("{n} {}", super::plural(n, "certificate", "certificates"));
        assert_eq!(certificates(0), "0 certificates");
        assert_eq!(certificates(1), "1 certificate");
        assert_eq!(certificates(2), "2 certificates");
        let channels = super::render_channels(&[]);
        assert!(channels.ends_with("\n0 channels\n"), "{channels}");
    }
}
