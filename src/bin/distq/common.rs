//! What every subcommand shares: reading addresses, resolving the authkey, naming signals.
//!
//! One place, so `--bind`, `--connect` and `--authkey-file` mean the same in every subcommand.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::args::KeyArgs;

/// An address flag that is not `HOST:PORT` (or the `:PORT` shorthand).
#[derive(Debug, PartialEq, Eq)]
pub enum AddrError {
    /// No `:PORT` at all, e.g. `5000` or `127.0.0.1`.
    NoPort { flag: &'static str, given: String },
    /// Something after the colon that is not a port number from 1 to 65535.
    BadPort { flag: &'static str, given: String },
    /// Nothing before the colon where a host is needed, or an unbracketed IPv6 address.
    BadHost { flag: &'static str, given: String },
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (flag, given, why) = match self {
            AddrError::NoPort { flag, given } => (flag, given, "no port"),
            AddrError::BadPort { flag, given } => (flag, given, "the port is not 1 to 65535"),
            AddrError::BadHost { flag, given } => (
                flag,
                given,
                "the host is missing (write an IPv6 address in brackets: [::1]:5000)",
            ),
        };
        let example = match *flag {
            "--bind" => "0.0.0.0:5000, or :5000 for all interfaces",
            _ => "127.0.0.1:5000, or :5000 for this machine",
        };
        write!(
            f,
            "{flag} {given:?}: expected HOST:PORT, e.g. {example} ({why})"
        )
    }
}

impl std::error::Error for AddrError {}

/// The address a client dials: `HOST:PORT`, or `:PORT` for 127.0.0.1 (said in the log), or
/// a Redis URL (`redis://…`, `rediss://…`) for queues on Redis, passed on as it is.
pub fn connect_addr(s: &str) -> Result<String, AddrError> {
    if is_redis(s) {
        return Ok(s.trim().to_owned());
    }
    host_port("--connect", s, "127.0.0.1", false)
}

/// Whether `--connect` names Redis rather than a distq server.
pub fn is_redis(addr: &str) -> bool {
    let addr = addr.trim();
    addr.starts_with("redis://") || addr.starts_with("rediss://")
}

/// A Redis URL without its password, for logs and hints.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The authkey for a client of `addr`. A distq server needs one. For Redis it is optional:
/// `--authkey` or `--authkey-file` is the password where the URL has none, and
/// `DISTQ_AUTHKEY` (a distq server's key, often exported for good) is not read.
pub fn authkey_for(addr: &str, key: &KeyArgs) -> Result<String, KeyError> {
    if !is_redis(addr) {
        return authkey(key);
    }
    match resolve_key(key, None) {
        Err(KeyError::Missing) => Ok(String::new()),
        other => other,
    }
}

/// The address a server listens on: `HOST:PORT`, or `:PORT` for all interfaces (0.0.0.0,
/// said in the log). Port 0 picks a free port.
pub fn bind_addr(s: &str) -> Result<String, AddrError> {
    host_port("--bind", s, "0.0.0.0", true)
}

/// `--python-connect`, read as `--connect` is.
pub fn python_connect_addr(s: &str) -> Result<String, AddrError> {
    host_port("--python-connect", s, "127.0.0.1", false)
}

/// `--python-bind`, read as `--bind` is.
pub fn python_bind_addr(s: &str) -> Result<String, AddrError> {
    host_port("--python-bind", s, "0.0.0.0", true)
}

fn host_port(
    flag: &'static str,
    s: &str,
    default_host: &str,
    port_zero: bool,
) -> Result<String, AddrError> {
    let given = || s.to_owned();
    let Some((host, port)) = s.trim().rsplit_once(':') else {
        return Err(AddrError::NoPort {
            flag,
            given: given(),
        });
    };
    // `::1` splits as host `:` and port `1`: an IPv6 address needs its brackets.
    let bare_ipv6 = host.contains(':') && !(host.starts_with('[') && host.ends_with(']'));
    if bare_ipv6 {
        return Err(AddrError::BadHost {
            flag,
            given: given(),
        });
    }
    match port.parse::<u16>() {
        Ok(0) if !port_zero => {
            return Err(AddrError::BadPort {
                flag,
                given: given(),
            })
        }
        Ok(_) => {}
        Err(_) if port.is_empty() => {
            return Err(AddrError::NoPort {
                flag,
                given: given(),
            })
        }
        Err(_) => {
            return Err(AddrError::BadPort {
                flag,
                given: given(),
            })
        }
    }
    if host.is_empty() {
        let full = format!("{default_host}:{port}");
        log::info!("{flag} {s}: using {full}");
        return Ok(full);
    }
    Ok(format!("{host}:{port}"))
}

/// Why there is no usable authkey.
#[derive(Debug)]
pub enum KeyError {
    /// Neither `--authkey`, `--authkey-file` nor `DISTQ_AUTHKEY`.
    Missing,
    /// `--authkey ""` or an empty `DISTQ_AUTHKEY`.
    Empty,
    /// The key file could not be read.
    Unreadable { path: PathBuf, source: io::Error },
    /// The key file holds nothing but a newline.
    EmptyFile { path: PathBuf },
    /// The key file is readable or writable by its group or others.
    TooOpen { path: PathBuf, mode: u32 },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Missing => write!(
                f,
                "no authkey: pass --authkey-file PATH (or --authkey KEY, or set DISTQ_AUTHKEY; there is no default key)"
            ),
            KeyError::Empty => write!(
                f,
                "the authkey is empty: give a non-empty --authkey or DISTQ_AUTHKEY"
            ),
            KeyError::Unreadable { path, source } => write!(
                f,
                "cannot read the authkey file {}: {source}",
                path.display()
            ),
            KeyError::EmptyFile { path } => write!(
                f,
                "the authkey file {} is empty: write the key into it",
                path.display()
            ),
            KeyError::TooOpen { path, mode } => write!(
                f,
                "permissions {mode:04o} for {} are too open; chmod 600 {} (only its owner may read the key)",
                path.display(),
                path.display()
            ),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyError::Unreadable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The authkey from `--authkey-file`, `--authkey` or else `DISTQ_AUTHKEY` (clap refuses the
/// two flags together; either flag wins over the environment); there is deliberately no
/// default.
pub fn authkey(key: &KeyArgs) -> Result<String, KeyError> {
    resolve_key(key, std::env::var("DISTQ_AUTHKEY").ok())
}

fn resolve_key(key: &KeyArgs, env: Option<String>) -> Result<String, KeyError> {
    match (&key.authkey_file, key.authkey.clone().or(env)) {
        (Some(path), _) => key_file(path),
        (None, Some(k)) if !k.is_empty() => Ok(k),
        (None, Some(_)) => Err(KeyError::Empty),
        (None, None) => Err(KeyError::Missing),
    }
}

/// Reads a key file as ssh reads a private key: only its owner may read or write it. A
/// trailing newline (`\n` or `\r\n`, as editors and `echo` leave) is not part of the key.
fn key_file(path: &Path) -> Result<String, KeyError> {
    let unreadable = |source| KeyError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let mode = mode_of(path).map_err(unreadable)?;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(unreadable)?;
    let key = text
        .strip_suffix('\n')
        .map(|k| k.strip_suffix('\r').unwrap_or(k))
        .unwrap_or(&text);
    match key.is_empty() {
        true => Err(KeyError::EmptyFile {
            path: path.to_owned(),
        }),
        false => Ok(key.to_owned()),
    }
}

#[cfg(unix)]
fn mode_of(path: &Path) -> io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// No group and other bits to check off Unix.
#[cfg(not(unix))]
fn mode_of(path: &Path) -> io::Result<u32> {
    fs::metadata(path).map(|_| 0o600)
}

/// A run stopped by a signal: `main` prints it and exits 130, as shells expect of Ctrl-C.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// A signal's name for the log ("SIGINT", not "2").
pub fn signal_name(signal: i32) -> String {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    match signal {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        SIGHUP => "SIGHUP".into(),
        SIGQUIT => "SIGQUIT".into(),
        other => format!("signal {other}"),
    }
}

/// The INFO line a server subcommand logs once it listens: address, queues, memory budget
/// and journal.
pub fn log_listening(server: &distq::Server) {
    let stats = server.stats();
    let queues: Vec<&str> = stats.queues.iter().map(|q| q.name.as_str()).collect();
    let journal = match &stats.journal {
        Some(j) => format!("; journal {}, fsync {}", j.dir, j.policy),
        None => String::new(),
    };
    log::info!(
        "listening on {} (queues {}; memory budget {} MiB{journal})",
        server.local_addr(),
        queues.join(", "),
        stats.memory_limit / (1024 * 1024)
    );
    if let Some(addr) = server.python_addr() {
        log::info!("listening for Python BaseManager clients on {addr}");
    }
}

/// `1.5`, `500ms`, `10s`, `5m`, `2h` or `1d`: seconds without a unit.
pub fn duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * scale).ok()
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn connect_addresses_need_a_port_and_take_the_shorthand() {
        assert_eq!(connect_addr("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(connect_addr("example.org:80").unwrap(), "example.org:80");
        assert_eq!(connect_addr("[::1]:5000").unwrap(), "[::1]:5000");
        assert_eq!(connect_addr(":5000").unwrap(), "127.0.0.1:5000");
        for bad in [
            "127.0.0.1",
            "5000",
            "127.0.0.1:",
            "host:port",
            "::1",
            "h:0",
            "",
        ] {
            let e = connect_addr(bad).unwrap_err().to_string();
            assert!(e.contains("expected HOST:PORT"), "{bad:?}: {e}");
            assert!(e.starts_with("--connect"), "{e}");
        }
    }

    #[test]
    fn bind_addresses_take_all_interfaces_for_the_shorthand_and_port_zero() {
        assert_eq!(bind_addr(":5000").unwrap(), "0.0.0.0:5000");
        assert_eq!(bind_addr("127.0.0.1:0").unwrap(), "127.0.0.1:0");
        for bad in ["5000", "0.0.0.0", ":", ":99999"] {
            let e = bind_addr(bad).unwrap_err().to_string();
            assert!(e.contains("expected HOST:PORT"), "{bad:?}: {e}");
            assert!(e.contains(":5000 for all interfaces"), "{e}");
        }
    }

    fn key_args(authkey: Option<&str>, file: Option<&Path>) -> KeyArgs {
        KeyArgs {
            authkey: authkey.map(String::from),
            authkey_file: file.map(Path::to_owned),
        }
    }

    #[cfg(unix)]
    fn key_at(name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("distq-key-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[cfg(unix)]
    #[test]
    fn key_files_lose_their_newline_and_must_be_private() {
        for (name, text) in [
            ("lf", "s3cret\n"),
            ("crlf", "s3cret\r\n"),
            ("bare", "s3cret"),
        ] {
            let path = key_at(name, text, 0o600);
            assert_eq!(authkey(&key_args(None, Some(&path))).unwrap(), "s3cret");
            let file_first = resolve_key(&key_args(None, Some(&path)), Some("env".into()));
            assert_eq!(
                file_first.unwrap(),
                "s3cret",
                "the flag wins over DISTQ_AUTHKEY"
            );
        }
        let open = key_at("open", "s3cret\n", 0o644);
        let e = authkey(&key_args(None, Some(&open)))
            .unwrap_err()
            .to_string();
        let want = format!(
            "permissions 0644 for {0} are too open; chmod 600 {0}",
            open.display()
        );
        assert!(e.contains(&want), "{e}");
        let empty = key_at("empty", "\n", 0o600);
        let e = authkey(&key_args(None, Some(&empty))).unwrap_err();
        assert!(matches!(e, KeyError::EmptyFile { .. }), "{e}");
        let missing = open.with_file_name("missing");
        let e = authkey(&key_args(None, Some(&missing))).unwrap_err();
        assert!(matches!(e, KeyError::Unreadable { .. }), "{e}");
        let _ = fs::remove_dir_all(open.parent().unwrap());
    }

    #[test]
    fn a_key_is_required_and_not_empty() {
        let none = || None;
        assert_eq!(
            resolve_key(&key_args(Some("k"), None), none()).unwrap(),
            "k"
        );
        let env = resolve_key(&key_args(None, None), Some("e".into()));
        assert_eq!(env.unwrap(), "e");
        let flag_first = resolve_key(&key_args(Some("k"), None), Some("e".into()));
        assert_eq!(flag_first.unwrap(), "k");
        let missing = resolve_key(&key_args(None, None), none());
        assert!(matches!(missing, Err(KeyError::Missing)));
        let empty = resolve_key(&key_args(Some(""), None), none());
        assert!(matches!(empty, Err(KeyError::Empty)));
    }

    #[test]
    fn signals_have_names() {
        assert_eq!(signal_name(signal_hook::consts::SIGINT), "SIGINT");
        assert_eq!(signal_name(signal_hook::consts::SIGTERM), "SIGTERM");
    }
}
