//! websockify's command line: `wsgate [OPTIONS] [SOURCE_ADDR:]SOURCE_PORT [TARGET_ADDR:TARGET_PORT]`.
//!
//! Owns reading websockify's options (its names, `--opt=value` and `--opt value`, unique
//! prefixes of long names, clustered short flags) and translating them into the text of a
//! wsgate configuration file. The gateway then loads that text through the normal loader
//! ([`Config::parse`](crate::Config::parse), relative paths against the current directory), so
//! it runs exactly what `--print-config` prints. An option is either translated with
//! websockify's meaning or refused with one line naming what to use instead: nothing is
//! silently dropped. It does not bind, connect or run anything.

use std::ffi::OsString;
use std::fmt::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// `--help`: print this text, exit 0.
    Help(String),
    /// `--print-config`: print the configuration text, exit 0.
    PrintConfig(String),
    /// Run the gateway on this configuration text.
    Run(String),
}

/// Why the command line is refused: one line, naming the option and what to use instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse<T>(message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(message.into()))
}

/// Whether a command line is websockify's form rather than wsgate's own: no `--config`, and the
/// first argument is neither a subcommand nor `--help`/`--version` of wsgate's own parser.
pub fn applies(args: &[OsString], subcommands: &[&str]) -> bool {
    let Some(first) = args.first().and_then(|a| a.to_str()) else {
        return false;
    };
    if subcommands.contains(&first) || ["-h", "--help", "-V", "--version"].contains(&first) {
        return false;
    }
    !args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == "-c" || a == "--config" || a.starts_with("--config="))
    })
}

/// The options, as websockify names them, plus wsgate's own (`--allow`, `--admin`,
/// `--print-config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Help,
    Verbose,
    Traffic,
    Record,
    Daemon,
    RunOnce,
    Timeout,
    IdleTimeout,
    Cert,
    Key,
    KeyPassword,
    SslOnly,
    SslTarget,
    VerifyClient,
    Cafile,
    SslVersion,
    SslCiphers,
    UnixTarget,
    UnixListen,
    UnixListenMode,
    Inetd,
    Web,
    WebAuth,
    FileOnly,
    WrapMode,
    PreferIpv6,
    Libserver,
    TargetConfig,
    TokenPlugin,
    TokenSource,
    HostToken,
    AuthPlugin,
    AuthSource,
    Heartbeat,
    LogFile,
    Syslog,
    LegacySyslog,
    Allow,
    Admin,
    PrintConfig,
}

/// (long name, short name, takes a value, option).
const OPTIONS: &[(&str, Option<char>, bool, Opt)] = &[
    ("help", Some('h'), false, Opt::Help),
    ("verbose", Some('v'), false, Opt::Verbose),
    ("traffic", None, false, Opt::Traffic),
    ("record", None, true, Opt::Record),
    ("daemon", Some('D'), false, Opt::Daemon),
    ("run-once", None, false, Opt::RunOnce),
    ("timeout", None, true, Opt::Timeout),
    ("idle-timeout", None, true, Opt::IdleTimeout),
    ("cert", None, true, Opt::Cert),
    ("key", None, true, Opt::Key),
    ("key-password", None, true, Opt::KeyPassword),
    ("ssl-only", None, false, Opt::SslOnly),
    ("ssl-target", None, false, Opt::SslTarget),
    ("verify-client", None, false, Opt::VerifyClient),
    ("cafile", None, true, Opt::Cafile),
    ("ssl-version", None, true, Opt::SslVersion),
    ("ssl-ciphers", None, true, Opt::SslCiphers),
    ("unix-target", None, true, Opt::UnixTarget),
    ("unix-listen", None, true, Opt::UnixListen),
    ("unix-listen-mode", None, true, Opt::UnixListenMode),
    ("inetd", None, false, Opt::Inetd),
    ("web", None, true, Opt::Web),
    ("web-auth", None, false, Opt::WebAuth),
    ("file-only", None, false, Opt::FileOnly),
    ("wrap-mode", None, true, Opt::WrapMode),
    ("prefer-ipv6", Some('6'), false, Opt::PreferIpv6),
    ("libserver", None, false, Opt::Libserver),
    ("target-config", None, true, Opt::TargetConfig),
    ("token-plugin", None, true, Opt::TokenPlugin),
    ("token-source", None, true, Opt::TokenSource),
    ("host-token", None, false, Opt::HostToken),
    ("auth-plugin", None, true, Opt::AuthPlugin),
    ("auth-source", None, true, Opt::AuthSource),
    ("heartbeat", None, true, Opt::Heartbeat),
    ("log-file", None, true, Opt::LogFile),
    ("syslog", None, true, Opt::Syslog),
    ("legacy-syslog", None, false, Opt::LegacySyslog),
    ("allow", None, true, Opt::Allow),
    ("admin", None, true, Opt::Admin),
    ("print-config", None, false, Opt::PrintConfig),
];

/// The usage text of this form.
pub const USAGE: &str = "\
Usage:
    wsgate [OPTIONS] [SOURCE_ADDR:]SOURCE_PORT [TARGET_ADDR:TARGET_PORT]
    wsgate [OPTIONS] --token-plugin CLASS --token-source ARG --allow SPEC [SOURCE_ADDR:]SOURCE_PORT

websockify's command line: the same option names and meanings (see README, \"Migrating from
websockify\"); options wsgate cannot honour are refused with a line saying what to use instead.

wsgate's own options:
  --print-config        print the equivalent config.toml and exit
  --allow SPEC          a target tokens may name (repeatable; required with --token-plugin),
                        e.g. 10.0.0.0/8:5900-5999, vnc.internal:5901, unix:/run/vnc/
  --admin ADDR          serve /metrics, /healthz, /readyz and /sessions on ADDR

websockify options: -h -v -D -6 --verbose --traffic --record --daemon --run-once --timeout
  --idle-timeout --cert --key --key-password --ssl-only --ssl-target --verify-client --cafile
  --ssl-version --ssl-ciphers --unix-target --unix-listen --unix-listen-mode --inetd --web
  --web-auth --file-only --wrap-mode --prefer-ipv6 --libserver --target-config --token-plugin
  --token-source --host-token --auth-plugin --auth-source --heartbeat --log-file --syslog
  --legacy-syslog
";

/// The options as given.
#[derive(Debug, Default)]
struct Given {
    flags: Vec<Opt>,
    values: Vec<(Opt, String)>,
    positional: Vec<String>,
    /// Everything after `--` (websockify's WRAP_COMMAND_LINE).
    wrap: Option<Vec<String>>,
}

impl Given {
    fn has(&self, o: Opt) -> bool {
        self.flags.contains(&o)
    }

    /// The last value given for `o` (optparse keeps the last).
    fn value(&self, o: Opt) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| *k == o)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, o: Opt) -> impl Iterator<Item = &str> {
        self.values
            .iter()
            .filter(move |(k, _)| *k == o)
            .map(|(_, v)| v.as_str())
    }
}

fn long_option(name: &str) -> Result<(&'static str, bool, Opt), Refusal> {
    if let Some(&(long, _, value, o)) = OPTIONS.iter().find(|(l, ..)| *l == name) {
        return Ok((long, value, o));
    }
    // optparse accepts any unambiguous prefix of a long option.
    let matches: Vec<_> = OPTIONS
        .iter()
        .filter(|(l, ..)| l.starts_with(name))
        .collect();
    match matches.as_slice() {
        [(long, _, value, o)] if !name.is_empty() => Ok((long, *value, *o)),
        [] | [_] => refuse(format!(
            "unknown option --{name} (try `wsgate --print-config --help`)"
        )),
        many => refuse(format!(
            "ambiguous option --{name}: could be {}",
            many.iter()
                .map(|(l, ..)| format!("--{l}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn parse(args: &[OsString]) -> Result<Given, Refusal> {
    let mut g = Given::default();
    let mut args = args.iter().map(|a| {
        a.to_str()
            .map(str::to_owned)
            .ok_or_else(|| Refusal(format!("argument {a:?} is not UTF-8")))
    });
    while let Some(arg) = args.next() {
        let arg = arg?;
        if arg == "--" {
            g.wrap = Some(args.collect::<Result<Vec<_>, _>>()?);
            break;
        }
        if let Some(rest) = arg.strip_prefix("--") {
            let (name, inline) = match rest.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (rest, None),
            };
            let (long, takes, o) = long_option(name)?;
            match (takes, inline) {
                (true, Some(v)) => g.values.push((o, v)),
                (true, None) => match args.next() {
                    Some(v) => g.values.push((o, v?)),
                    None => return refuse(format!("--{long} needs a value")),
                },
                (false, Some(_)) => return refuse(format!("--{long} takes no value")),
                (false, None) => g.flags.push(o),
            }
        } else if arg.len() > 1 && arg.starts_with('-') {
            for c in arg.chars().skip(1) {
                match OPTIONS.iter().find(|(_, s, ..)| *s == Some(c)) {
                    Some(&(_, _, _, o)) => g.flags.push(o),
                    None => return refuse(format!("unknown option -{c}")),
                }
            }
        } else {
            g.positional.push(arg);
        }
    }
    Ok(g)
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `path` made absolute against `cwd` (the printed file then works from any directory).
fn abs(cwd: &Path, path: &str) -> String {
    let p = Path::new(path);
    if p.is_absolute() {
        path.to_string()
    } else {
        cwd.join(p).display().to_string()
    }
}

/// `host:port` (websockify strips `[]` around the host) -> (host, port).
fn host_port(arg: &str, what: &str) -> Result<(String, u16), Refusal> {
    let (host, port) = arg
        .rsplit_once(':')
        .ok_or_else(|| Refusal(format!("{what} {arg:?} is not host:port")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| Refusal(format!("{what} {arg:?}: {port:?} is not a port number")))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    ))
}

fn join_host(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A plugin class name without websockify's module path.
fn class<'a>(name: &'a str, module: &str, what: &str) -> Result<&'a str, Refusal> {
    match name.rsplit_once('.') {
        None => Ok(name),
        Some((m, c)) if m == module => Ok(c),
        Some(_) => refuse(format!(
            "{what} {name}: custom Python plugins cannot run in wsgate; \
             for tokens, serve the mapping over HTTP and use --token-plugin JSONTokenApi --token-source URL"
        )),
    }
}

/// websockify's TokenRedis source `host[:port[:db[:password[:namespace]]]]` as a redis URL and
/// key prefix.
fn redis_source(src: &str) -> Result<(String, String), Refusal> {
    let parts: Vec<&str> = src.split(':').collect();
    if parts.len() > 5 || parts[0].is_empty() {
        return refuse(format!(
            "--token-source {src:?}: TokenRedis takes host[:port[:db[:password[:namespace]]]]"
        ));
    }
    let get = |i: usize| parts.get(i).copied().filter(|s| !s.is_empty());
    let mut url = String::from("redis://");
    if let Some(pw) = get(3) {
        url.push(':');
        for b in pw.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                url.push(char::from(b));
            } else {
                let _ = write!(url, "%{b:02X}");
            }
        }
        url.push('@');
    }
    url.push_str(parts[0]);
    if let Some(port) = get(1) {
        let _ = write!(url, ":{port}");
    }
    if let Some(db) = get(2) {
        let _ = write!(url, "/{db}");
    }
    let prefix = get(4).map(|ns| format!("{ns}:")).unwrap_or_default();
    Ok((url, prefix))
}

/// The `[route.auth]` of websockify's JWTTokenApi: the key file decides the algorithm.
fn jwt_auth(cwd: &Path, src: &str) -> Result<String, Refusal> {
    let path = abs(cwd, src);
    let bytes = std::fs::read(&path).map_err(|e| {
        Refusal(format!(
            "--token-source {src}: cannot read the JWTTokenApi key: {e}"
        ))
    })?;
    let mut out = String::from("[route.auth]\ntype = \"jwt\"\ntoken_from = \"query\"\n");
    if bytes.starts_with(b"-----BEGIN") {
        let alg = if jsonwebtoken::DecodingKey::from_rsa_pem(&bytes).is_ok() {
            "RS256"
        } else if jsonwebtoken::DecodingKey::from_ec_pem(&bytes).is_ok() {
            "ES256"
        } else if jsonwebtoken::DecodingKey::from_ed_pem(&bytes).is_ok() {
            "EdDSA"
        } else {
            return refuse(format!(
                "--token-source {src}: not an RSA, EC or Ed25519 public key in PEM (give the public key; JWE tokens are not supported)"
            ));
        };
        let _ = writeln!(out, "algorithms = [\"{alg}\"]\nkey_file = {}", q(&path));
    } else {
        let _ = writeln!(out, "algorithms = [\"HS256\"]\nsecret_file = {}", q(&path));
    }
    Ok(out)
}

/// Translate websockify's command line (without the program name) into a wsgate configuration.
pub fn translate(args: &[OsString], cwd: &Path) -> Result<Invocation, Refusal> {
    let g = parse(args)?;
    if g.has(Opt::Help) {
        return Ok(Invocation::Help(USAGE.to_string()));
    }

    // Options wsgate cannot honour: one line each, naming what to use instead.
    let refusals: &[(Opt, bool, &str)] = &[
        (Opt::Daemon, false, "--daemon: wsgate stays in the foreground; run it under a service manager (a systemd unit, supervisord, or `nohup wsgate ... &`)"),
        (Opt::RunOnce, false, "--run-once: wsgate serves until it is stopped; stop it with SIGTERM once your session is done"),
        (Opt::Timeout, true, "--timeout: wsgate does not exit when nobody connects; stop it with SIGTERM from a timer, or start it on demand with systemd socket activation in front"),
        (Opt::IdleTimeout, true, "--idle-timeout: wsgate does not exit when idle; stop it with SIGTERM from a timer (per-session limits are [limits] idle_timeout, a different thing)"),
        (Opt::KeyPassword, true, "--key-password: encrypted private keys are not supported; decrypt the key once (`openssl pkey -in KEY -out KEY.plain`, mode 0600) and pass --key KEY.plain"),
        (Opt::VerifyClient, false, "--verify-client: wsgate listeners do not check client certificates; terminate mutual TLS in a proxy in front of wsgate, or use [route.auth] (jwt or forward)"),
        (Opt::SslCiphers, true, "--ssl-ciphers: wsgate uses rustls' fixed modern cipher suites (TLS 1.3, and TLS 1.2 with ECDHE and AEAD only); drop the option"),
        (Opt::Inetd, false, "--inetd: wsgate binds its own socket; give it a port, or --unix-listen FILE"),
        (Opt::WebAuth, false, "--web-auth: wsgate serves --web files without authentication; put the pages behind the web server in front of wsgate, or drop --web-auth"),
        (Opt::WrapMode, true, "--wrap-mode: wsgate does not wrap programs; run the program under a service manager and give wsgate its port as the target"),
        (Opt::Traffic, false, "--traffic: wsgate does not print per-frame traffic; watch the byte counters at /metrics (--admin ADDR), or record sessions with --record FILE"),
        (Opt::Syslog, true, "--syslog: wsgate logs to stderr or --log-file; send stderr to syslog with your service manager (journald) or `wsgate ... 2>&1 | logger -t wsgate`"),
        (Opt::LegacySyslog, false, "--legacy-syslog: wsgate logs to stderr or --log-file; send stderr to syslog with your service manager (journald) or `logger -t wsgate`"),
    ];
    for (o, valued, message) in refusals {
        if (*valued && g.value(*o).is_some()) || (!*valued && g.has(*o)) {
            return refuse(*message);
        }
    }
    if g.wrap.is_some() {
        return refuse("-- WRAP_COMMAND_LINE: wsgate does not start programs; run the program under a service manager and give wsgate its port as the target");
    }
    match g.value(Opt::SslVersion) {
        None | Some("default" | "tlsv1_1" | "tlsv1_2") => {}
        Some("tlsv1_3") => {
            return refuse("--ssl-version tlsv1_3: wsgate has no minimum-version setting; it accepts TLS 1.2 and 1.3 (never older), drop the option")
        }
        Some(v) => {
            return refuse(format!(
                "--ssl-version {v:?}: websockify takes default, tlsv1_1, tlsv1_2 or tlsv1_3"
            ))
        }
    }

    let mut notes: Vec<String> = Vec::new();
    if g.has(Opt::Libserver) {
        notes.push("--libserver: wsgate has a single engine; nothing to choose".into());
    }
    if g.has(Opt::FileOnly) {
        notes.push("--file-only: wsgate never lists directories".into());
    }
    if g.value(Opt::Cafile).is_some() {
        notes.push("--cafile: without --verify-client it has no effect (as in websockify)".into());
    }
    if matches!(g.value(Opt::SslVersion), Some("tlsv1_1" | "tlsv1_2")) {
        notes.push("--ssl-version: wsgate accepts TLS 1.2 and 1.3 only".into());
    }

    // Token plugins (and the deprecated --target-config, websockify's TokenFile).
    let plugin = match (g.value(Opt::TargetConfig), g.value(Opt::TokenPlugin)) {
        (Some(_), Some(_)) => {
            return refuse("--target-config and --token-plugin: give one (--target-config FILE is --token-plugin TokenFile --token-source FILE)")
        }
        (Some(f), None) => Some(("TokenFile", Some(f))),
        (None, Some(p)) => Some((
            class(p, "websockify.token_plugins", "--token-plugin")?,
            g.value(Opt::TokenSource),
        )),
        (None, None) => None,
    };
    if plugin.is_none() {
        if g.value(Opt::TokenSource).is_some() {
            return refuse("--token-source needs --token-plugin (as in websockify)");
        }
        if g.has(Opt::HostToken) {
            return refuse("--host-token needs --token-plugin (as in websockify)");
        }
        if g.value(Opt::Allow).is_some() {
            return refuse(
                "--allow applies to targets named by tokens: use it with --token-plugin",
            );
        }
    }
    if g.value(Opt::AuthSource).is_some() && g.value(Opt::AuthPlugin).is_none() {
        return refuse("--auth-source needs --auth-plugin (as in websockify)");
    }
    if g.has(Opt::LegacySyslog) {
        return refuse("--legacy-syslog needs --syslog (as in websockify)");
    }

    // The source: [source_addr:]source_port, or --unix-listen FILE.
    let mut pos = g.positional.iter();
    let bind = match g.value(Opt::UnixListen) {
        Some(f) => format!("unix:{}", abs(cwd, f)),
        None => {
            let Some(src) = pos.next() else {
                return refuse("too few arguments: give [SOURCE_ADDR:]SOURCE_PORT (see --help)");
            };
            let (host, port) = match src.rsplit_once(':') {
                Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
                None => ("", src.as_str()),
            };
            let port: u16 = port
                .parse()
                .map_err(|_| Refusal(format!("cannot parse the listen port of {src:?}")))?;
            let v6 = g.has(Opt::PreferIpv6);
            let ip: IpAddr = match host {
                "" if v6 => IpAddr::from([0u16; 8]),
                "" => IpAddr::from([0u8; 4]),
                "localhost" if v6 => IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1u16]),
                "localhost" => IpAddr::from([127, 0, 0, 1]),
                h => h.parse().map_err(|_| {
                    Refusal(format!(
                        "source address {h:?}: wsgate listens on an IP address (e.g. 0.0.0.0, 127.0.0.1, ::); give the address, not a name"
                    ))
                })?,
            };
            std::net::SocketAddr::new(ip, port).to_string()
        }
    };
    if g.value(Opt::UnixListenMode).is_some() && g.value(Opt::UnixListen).is_none() {
        return refuse("--unix-listen-mode needs --unix-listen FILE");
    }

    // The target: host:port, --unix-target FILE, or a token plugin.
    let ssl_target = g.has(Opt::SslTarget);
    let backend = match (g.value(Opt::UnixTarget), &plugin) {
        (Some(_), Some(_)) => {
            return refuse("--unix-target and --token-plugin: give one (UnixDomainSocketDirectory maps tokens to unix sockets)")
        }
        (Some(_), None) if ssl_target => {
            return refuse("--ssl-target with --unix-target: wsgate speaks TLS to TCP backends only")
        }
        (Some(f), None) => Some(format!("unix:{}", abs(cwd, f))),
        (None, Some(_)) => None,
        (None, None) => {
            let Some(t) = pos.next() else {
                return refuse("too few arguments: give TARGET_ADDR:TARGET_PORT, --unix-target FILE or --token-plugin (see --help)");
            };
            let (host, port) = host_port(t, "target")?;
            let scheme = if ssl_target { "tls://" } else { "" };
            Some(format!("{scheme}{}", join_host(&host, port)))
        }
    };
    if let Some(extra) = pos.next() {
        return refuse(format!("too many arguments: {extra:?}"));
    }

    // TLS on the listener.
    let explicit_cert = g.value(Opt::Cert);
    let cert = match explicit_cert {
        Some(c) => Some(abs(cwd, c)),
        None if cwd.join("self.pem").is_file() => Some(abs(cwd, "self.pem")),
        None => None,
    };
    if g.value(Opt::Key).is_some() && cert.is_none() {
        return refuse(
            "--key needs a certificate: --cert FILE (or self.pem in the current directory)",
        );
    }
    if g.has(Opt::SslOnly) && cert.is_none() {
        return refuse("--ssl-only and self.pem not found: give --cert FILE");
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# wsgate configuration from websockify's command line:\n#   wsgate {}",
        args.iter()
            .map(|a| a.to_string_lossy().replace(|c: char| c.is_control(), " "))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for n in &notes {
        let _ = writeln!(out, "# {n}");
    }
    let _ = writeln!(out, "\n[[listener]]\nbind = {}", q(&bind));
    if let Some(mode) = g.value(Opt::UnixListenMode) {
        let digits = mode.trim_start_matches("0o");
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return refuse(format!(
                "--unix-listen-mode {mode:?} is not an octal file mode (e.g. 600)"
            ));
        }
        let _ = writeln!(
            out,
            "mode = {}",
            q(&format!("0{}", digits.trim_start_matches('0')))
        );
    }
    if let Some(cert) = &cert {
        let key = g
            .value(Opt::Key)
            .map_or_else(|| cert.clone(), |k| abs(cwd, k));
        let plain = if g.has(Opt::SslOnly) {
            ""
        } else {
            ", accept_plain = true"
        };
        let _ = writeln!(
            out,
            "tls = {{ cert = {}, key = {}{plain} }}",
            q(cert),
            q(&key)
        );
    }

    let _ = writeln!(
        out,
        "\n# websockify proxies every path.\n[[route]]\npath = \"/*\""
    );
    if let Some(b) = &backend {
        let _ = writeln!(out, "backend = {}", q(b));
    }
    if let Some(file) = g.value(Opt::Record) {
        let path = PathBuf::from(abs(cwd, file));
        let dir = path
            .parent()
            .map_or_else(|| cwd.to_path_buf(), Path::to_path_buf);
        let prefix = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Refusal(format!("--record {file:?} does not name a file")))?;
        let _ = writeln!(
            out,
            "record = {}\nrecord_prefix = {}",
            q(&dir.display().to_string()),
            q(&prefix)
        );
    }
    let mut auth_table = None;
    if let Some(p) = g.value(Opt::AuthPlugin) {
        match class(p, "websockify.auth_plugins", "--auth-plugin")? {
            "ExpectOrigin" => {
                let origins: Vec<String> = g
                    .value(Opt::AuthSource)
                    .unwrap_or("")
                    .split_whitespace()
                    .map(q)
                    .collect();
                if origins.is_empty() {
                    return refuse("--auth-plugin ExpectOrigin needs --auth-source \"ORIGIN ...\" (with none, websockify refuses every connection)");
                }
                let _ = writeln!(out, "allowed_origins = [{}]", origins.join(", "));
            }
            "BasicHTTPAuth" => return refuse("--auth-plugin BasicHTTPAuth: wsgate has no built-in password check; use [route.auth] type = \"forward\" with a service that checks the Authorization header (write a config file; see --print-config)"),
            "ClientCertCNAuth" => return refuse("--auth-plugin ClientCertCNAuth: wsgate listeners do not check client certificates; terminate mutual TLS in front of wsgate and use [route.auth] type = \"forward\""),
            other => return refuse(format!("--auth-plugin {other}: not a websockify auth plugin wsgate knows (ExpectOrigin maps to allowed_origins; use [route.auth] type = \"forward\" for the rest)")),
        }
    }

    if let Some((name, source)) = plugin {
        let Some(src) = source else {
            return refuse(format!("--token-plugin {name} needs --token-source ARG"));
        };
        let allow: Vec<&str> = g.all(Opt::Allow).collect();
        if allow.is_empty() {
            return refuse(format!(
                "--token-plugin {name} needs --allow SPEC (repeatable): the targets a token may name, e.g. --allow 10.0.0.0/8:5900-5999; wsgate connects nothing outside them (websockify connects anything a token names)"
            ));
        }
        let token_from = if g.has(Opt::HostToken) {
            "token_from = \"host\"\n"
        } else {
            "token_from = \"query\"\ntoken_name = \"token\"\n"
        };
        let (source, extra) = match name {
            "TokenFile" | "ReadOnlyTokenFile" => (format!("file:{}", abs(cwd, src)), String::new()),
            "TokenFileName" => (format!("token-dir:{}", abs(cwd, src)), String::new()),
            "UnixDomainSocketDirectory" => (format!("socket-dir:{}", abs(cwd, src)), String::new()),
            "BaseTokenAPI" | "JSONTokenApi" => {
                if !(src.starts_with("http://") || src.starts_with("https://")) {
                    return refuse(format!("--token-source {src:?}: {name} takes an http:// or https:// URL"));
                }
                (src.replace("%s", "{token}"), String::new())
            }
            "TokenRedis" => {
                let (url, prefix) = redis_source(src)?;
                (url, format!("redis_key_prefix = {}\n", q(&prefix)))
            }
            "JWTTokenApi" => {
                if g.has(Opt::HostToken) {
                    return refuse("--host-token with JWTTokenApi: wsgate reads the JWT from the token query parameter (or a header, cookie or subprotocol in a config file)");
                }
                auth_table = Some(jwt_auth(cwd, src)?);
                ("jwt".to_string(), String::new())
            }
            other => {
                return refuse(format!(
                    "--token-plugin {other}: not a websockify token plugin wsgate knows (TokenFile, ReadOnlyTokenFile, TokenFileName, BaseTokenAPI, JSONTokenApi, JWTTokenApi, TokenRedis, UnixDomainSocketDirectory)"
                ))
            }
        };
        out.push_str("\n[route.target]\n");
        if name != "JWTTokenApi" {
            out.push_str(token_from);
        }
        let _ = writeln!(out, "source = {}", q(&source));
        out.push_str(&extra);
        let _ = writeln!(
            out,
            "allow = [{}]",
            allow.iter().map(|a| q(a)).collect::<Vec<_>>().join(", ")
        );
        if ssl_target {
            out.push_str("tls = true\n");
        }
    }
    if let Some(a) = auth_table {
        let _ = write!(out, "\n{a}");
    }

    if let Some(h) = g.value(Opt::Heartbeat) {
        let secs: u64 = h
            .parse()
            .map_err(|_| Refusal(format!("--heartbeat {h:?} is not a number of seconds")))?;
        if secs > 0 {
            let _ = writeln!(out, "\n[limits]\nping_interval = \"{secs}s\"");
        }
    }
    if let Some(dir) = g.value(Opt::Web) {
        let _ = writeln!(out, "\n[static]\ndir = {}", q(&abs(cwd, dir)));
    }
    if let Some(addr) = g.value(Opt::Admin) {
        let _ = writeln!(out, "\n[admin]\nbind = {}", q(addr));
    }
    let mut log = String::new();
    if g.has(Opt::Verbose) {
        log.push_str("level = \"debug\"\n");
    }
    if let Some(f) = g.value(Opt::LogFile) {
        let _ = writeln!(log, "file = {}", q(&abs(cwd, f)));
    }
    if !log.is_empty() {
        let _ = write!(out, "\n[log]\n{log}");
    }

    Ok(if g.has(Opt::PrintConfig) {
        Invocation::PrintConfig(out)
    } else {
        Invocation::Run(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(args: &[&str]) -> Result<Invocation, Refusal> {
        let args: Vec<OsString> = args.iter().map(Into::into).collect();
        translate(&args, Path::new("/nonexistent-cwd"))
    }

    fn text(args: &[&str]) -> String {
        match tr(args) {
            Ok(Invocation::Run(t) | Invocation::PrintConfig(t)) => t,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn basic_form_loads() {
        let t = text(&["6080", "localhost:5901"]);
        let c = crate::Config::parse(&t, Path::new(".")).unwrap();
        assert_eq!(c.listeners[0].bind.to_string(), "0.0.0.0:6080");
        assert_eq!(c.routes[0].path, "/*");
        assert_eq!(c.routes[0].backends[0].to_string(), "localhost:5901");
    }

    #[test]
    fn option_forms() {
        let body = |t: String| t.split_once("\n\n").unwrap().1.to_string();
        assert_eq!(
            body(text(&["--web=/w", "1", "h:2"])),
            body(text(&["--web", "/w", "1", "h:2"]))
        );
        // A unique prefix, as optparse takes it; an ambiguous one is refused.
        assert!(text(&["--verb", "1", "h:2"]).contains("level = \"debug\""));
        assert!(tr(&["--ssl", "1", "h:2"])
            .unwrap_err()
            .0
            .contains("ambiguous"));
        assert!(tr(&["--colour", "1", "h:2"])
            .unwrap_err()
            .0
            .contains("unknown option"));
        assert!(tr(&["-v6x", "1", "h:2"]).unwrap_err().0.contains("-x"));
        assert!(text(&["-v6", "1", "h:2"]).contains("\"[::]:1\""));
    }

    #[test]
    fn applies_only_without_config_or_subcommand() {
        let a = |v: &[&str]| {
            applies(
                &v.iter().map(Into::into).collect::<Vec<_>>(),
                &["check", "run"],
            )
        };
        assert!(a(&["6080", "h:1"]));
        assert!(a(&["--web", "/x", "6080", "h:1"]));
        assert!(!a(&[]));
        assert!(!a(&["check", "--config", "x"]));
        assert!(!a(&["--config", "x"]));
        assert!(!a(&["--config=x", "run"]));
        assert!(!a(&["--help"]));
    }

    #[test]
    fn redis_sources() {
        assert_eq!(
            redis_source("h").unwrap(),
            ("redis://h".into(), String::new())
        );
        assert_eq!(
            redis_source("h:6380:2:p@ss:ns").unwrap(),
            ("redis://:p%40ss@h:6380/2".into(), "ns:".into())
        );
        assert!(redis_source("h:1:2:3:4:5").is_err());
    }
}
