//! Runs a shell script on a pseudo-terminal (util-linux `script` makes one) and answers the
//! prompts that appear on it, as an operator at the keyboard would: each answer is typed only
//! once its prompt is on the screen, so nothing depends on timing.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_testkit::tool;

/// What a script printed (carriage returns removed) and how it ended.
pub struct Screen {
    pub text: String,
    pub status: ExitStatus,
}

/// Runs `sh -e SCRIPT` on a terminal in `cwd` with exactly `env`. Whenever one of `prompts`
/// appears after what was already answered, `answer(prompt, screen so far)` is typed, with a
/// newline. `Err` (with the screen) if the script has not ended within `limit`.
pub fn run(
    script: &Path,
    cwd: &Path,
    env: &[(String, String)],
    prompts: &[&str],
    mut answer: impl FnMut(&str, &str) -> String,
    limit: Duration,
) -> Result<Screen, String> {
    let mut child = Command::new(tool("script"))
        .arg("-qec")
        .arg(format!("sh -e {}", script.display()))
        .arg("/dev/null")
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("script (util-linux) does not start: {e}"))?;
    let screen = Arc::new(Mutex::new(Vec::new()));
    let ended = Arc::new(AtomicBool::new(false));
    let reader = {
        let (screen, ended) = (screen.clone(), ended.clone());
        let mut stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut chunk) {
                screen.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            ended.store(true, Ordering::SeqCst);
        })
    };
    // The terminal's input stays open until the script ends: `script` ends its child's input
    // when its own ends.
    let mut keyboard = child.stdin.take().expect("stdin is piped");
    let mut answered = 0;
    let deadline = Instant::now() + limit;
    loop {
        let ended_now = ended.load(Ordering::SeqCst);
        let bytes = screen.lock().unwrap().clone();
        if let Some((prompt, end)) = next_prompt(&bytes[answered..], prompts) {
            answered += end;
            let typed = answer(prompt, &clean(&bytes[..answered]));
            keyboard
                .write_all(format!("{typed}\n").as_bytes())
                .and_then(|()| keyboard.flush())
                .map_err(|e| format!("cannot type on the terminal: {e}"))?;
            continue;
        }
        if ended_now {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the step did not end within {limit:?} (a prompt the test does not know?); the screen:\n{}",
                clean(&bytes)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(keyboard);
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = reader.join();
    let text = clean(&screen.lock().unwrap());
    Ok(Screen { text, status })
}

/// The prompt that ends first in `screen` (the longest of those ending at the same place, so
/// that `New Administrator PIN:` wins over `Administrator PIN:`), and where it ends.
fn next_prompt<'p>(screen: &[u8], prompts: &[&'p str]) -> Option<(&'p str, usize)> {
    prompts
        .iter()
        .filter_map(|prompt| {
            let at = screen
                .windows(prompt.len())
                .position(|w| w == prompt.as_bytes())?;
            Some((*prompt, at + prompt.len()))
        })
        .min_by_key(|(prompt, end)| (*end, usize::MAX - prompt.len()))
}

fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_prompt_on_the_screen_is_answered_and_the_longest_at_one_place() {
        let prompts = ["Administrator PIN:", "New Administrator PIN:", "Type 'yes'"];
        let screen = b"hello\nNew Administrator PIN: ";
        assert_eq!(
            next_prompt(screen, &prompts),
            Some(("New Administrator PIN:", 28))
        );
        assert_eq!(
            next_prompt(b"Type 'yes' ... Administrator PIN:", &prompts)
                .unwrap()
                .0,
            "Type 'yes'"
        );
        assert_eq!(next_prompt(b"nothing yet", &prompts), None);
    }
}
