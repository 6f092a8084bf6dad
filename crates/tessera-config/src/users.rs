//! Users by name or number, as `/etc/passwd` lists them (no NSS lookup: no `unsafe`, no
//! new crate; a user that only a directory service knows is given by number instead).

use crate::error::UnknownUser;
use std::path::Path;

/// The password file read by [`uid_of`] and [`describe`].
pub const PASSWD: &str = "/etc/passwd";

/// The uid of `name` in the text of a password file (`name:x:uid:...` lines).
pub fn uid_in(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let user = fields.next()?;
        let uid = fields.nth(1)?;
        (user == name).then(|| uid.parse().ok()).flatten()
    })
}

/// The first name of `uid` in the text of a password file.
pub fn name_in(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let user = fields.next()?;
        let number = fields.nth(1)?.parse::<u32>().ok()?;
        (number == uid && !user.is_empty()).then(|| user.to_string())
    })
}

/// A user given as a number or a name: its uid, or why it is not a user.
pub fn resolve_in(passwd: &str, user: &str) -> Result<u32, UnknownUser> {
    let user = user.trim();
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    uid_in(passwd, user).ok_or_else(|| UnknownUser {
        user: user.into(),
        passwd: PASSWD,
    })
}

/// [`resolve_in`] against `/etc/passwd`.
pub fn uid_of(user: &str) -> Result<u32, UnknownUser> {
    resolve_in(&read(Path::new(PASSWD)), user)
}

/// `uid 65534 (nobody)`, or `uid 1234` for a uid without a name.
pub fn describe(uid: u32) -> String {
    match name_in(&read(Path::new(PASSWD)), uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// An unreadable file reads as empty: every name is then unknown (an error naming it) and
/// uids are described by number.
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment is no user\n\
        tessera:x:998:998::/var/lib/tessera:/usr/sbin/nologin\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn names_and_numbers_resolve() {
        assert_eq!(resolve_in(PASSWD_TEXT, "tessera"), Ok(998));
        assert_eq!(resolve_in(PASSWD_TEXT, " nobody "), Ok(65534));
        assert_eq!(resolve_in(PASSWD_TEXT, "4242"), Ok(4242));
        assert_eq!(resolve_in(PASSWD_TEXT, "0"), Ok(0));
        let unknown = resolve_in(PASSWD_TEXT, "mallory").unwrap_err();
        assert_eq!(unknown.user, "mallory");
        let unknown = unknown.to_string();
        assert!(
            unknown.contains("\"mallory\"") && unknown.contains(PASSWD),
            "{unknown}"
        );
        assert_eq!(name_in(PASSWD_TEXT, 998).as_deref(), Some("tessera"));
        assert_eq!(name_in(PASSWD_TEXT, 7), None);
        assert_eq!(describe(0), "uid 0 (root)");
    }
}
