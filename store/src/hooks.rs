//! A node's hooks (DESIGN "Agent hooks and drills"): the commands the node's operator
//! wrote in a TOML file to validate a staged tree before it may go live, reload the
//! service after the switch, and probe its health. The control plane never sends a
//! command: it only learns how each run ended.
//!
//! Each hook is an argv list run without a shell (unless the operator writes one), with
//! `{staged}` and `{live}` expanded to directories, a scrubbed environment, no standard
//! input, a timeout (the whole process group is killed when it passes) and its output
//! (stdout and stderr together) kept up to [`MAX_OUTPUT`] bytes. A hooks file that
//! someone other than its owner could write is refused: whoever can edit it runs commands
//! as the agent.

use domain::protocol::{HealthProbe, HookRun};
use serde::Deserialize;
use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The most output kept of one run, in bytes (the rest is read and dropped).
pub const MAX_OUTPUT: usize = 64 * 1024;
/// The most health probes one drill may ask for.
pub const MAX_PROBES: u32 = 1000;
/// How long the output of a hook that ended is still read.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// The environment every hook runs with, and nothing else.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksFile {
    validate: Option<CommandHook>,
    reload: Option<CommandHook>,
    health: Option<HealthHook>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandHook {
    command: Vec<String>,
    timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthHook {
    command: Option<Vec<String>>,
    url: Option<String>,
    timeout: Option<String>,
}

/// One command hook, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// The health probe: a command, or an `http://` URL answered with a 2xx status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthSpec {
    Command(CommandSpec),
    Url {
        url: String,
        host: String,
        port: u16,
        path: String,
        timeout: Duration,
    },
}

/// A node's hooks, as read from its hooks file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub validate: Option<CommandSpec>,
    pub reload: Option<CommandSpec>,
    pub health: Option<HealthSpec>,
}

fn parse_timeout(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    let Some(text) = text else { return Ok(default) };
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid timeout {text:?}: a number and a unit such as 30s"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        _ => return Err(format!("invalid timeout {text:?}: use ms, s or m")),
    };
    if duration.is_zero() || duration > Duration::from_secs(600) {
        return Err(format!("timeout {text:?} must be above zero and at most 10m"));
    }
    Ok(duration)
}

fn command_spec(name: &str, argv: Vec<String>, timeout: Option<&str>) -> Result<CommandSpec, String> {
    if argv.is_empty() || argv[0].trim().is_empty() {
        return Err(format!("[{name}] command is empty: give an argv list such as [\"nginx\", \"-t\"]"));
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err(format!("[{name}] command holds a NUL byte"));
    }
    Ok(CommandSpec {
        argv,
        timeout: parse_timeout(timeout, Duration::from_secs(30)).map_err(|err| format!("[{name}] {err}"))?,
    })
}

fn url_spec(url: &str, timeout: Duration) -> Result<HealthSpec, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "[health] url must start with http:// (a probe of a service on this node)".to_string())?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.contains([' ', '\r', '\n']) {
        return Err("[health] url is not http://host[:port]/path".into());
    }
    // `host`, `host:port`, `[v6]` or `[v6]:port`.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !authority.ends_with(']') => {
            let port: u16 = port.parse().map_err(|_| "[health] url has an invalid port".to_string())?;
            (host.trim_start_matches('[').trim_end_matches(']').to_string(), port)
        }
        _ => (authority.trim_start_matches('[').trim_end_matches(']').to_string(), 80),
    };
    Ok(HealthSpec::Url {
        url: url.to_string(),
        host,
        port,
        path: path.to_string(),
        timeout,
    })
}

impl Hooks {
    /// Reads a hooks file, refusing one that is not safe to run commands from: it (and the
    /// directory holding it) must not be writable by group or others, and must belong to
    /// root or to the user this process runs as.
    pub fn load(path: &Path) -> Result<Hooks, String> {
        let shown = path.display();
        let meta = std::fs::symlink_metadata(path).map_err(|err| format!("cannot read the hooks file {shown}: {err}"))?;
        if !meta.is_file() {
            return Err(format!("the hooks file {shown} is not a regular file"));
        }
        let me = nix::unistd::geteuid().as_raw();
        let check = |what: &str, meta: &std::fs::Metadata| {
            if meta.mode() & 0o022 != 0 {
                return Err(format!(
                    "{what} is writable by group or others (mode {:04o}): whoever can edit it runs commands as this agent; chmod go-w it",
                    meta.mode() & 0o7777
                ));
            }
            if meta.uid() != 0 && meta.uid() != me {
                return Err(format!("{what} belongs to uid {}, neither root nor this agent's user", meta.uid()));
            }
            Ok(())
        };
        check(&format!("the hooks file {shown}"), &meta)?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let parent_meta = std::fs::metadata(parent).map_err(|err| format!("cannot read {}: {err}", parent.display()))?;
        // A sticky directory writable by all (/tmp) still lets others replace the file.
        check(&format!("the directory of the hooks file {}", parent.display()), &parent_meta)?;
        let text = std::fs::read_to_string(path).map_err(|err| format!("cannot read the hooks file {shown}: {err}"))?;
        if text.len() > 64 * 1024 {
            return Err(format!("the hooks file {shown} is larger than 64 KiB"));
        }
        Hooks::parse(&text).map_err(|err| format!("{shown}: {err}"))
    }

    /// Parses the hooks file's text (without the ownership checks of [`Hooks::load`]).
    pub fn parse(text: &str) -> Result<Hooks, String> {
        let file: HooksFile = toml::from_str(text).map_err(|err| domain::format::unquoted(&err.to_string()))?;
        let validate = file
            .validate
            .map(|hook| command_spec("validate", hook.command, hook.timeout.as_deref()))
            .transpose()?;
        let reload = file
            .reload
            .map(|hook| command_spec("reload", hook.command, hook.timeout.as_deref()))
            .transpose()?;
        let health = match file.health {
            None => None,
            Some(HealthHook {
                command: Some(argv),
                url: None,
                timeout,
            }) => Some(HealthSpec::Command(command_spec("health", argv, timeout.as_deref())?)),
            Some(HealthHook {
                command: None,
                url: Some(url),
                timeout,
            }) => Some(url_spec(&url, parse_timeout(timeout.as_deref(), Duration::from_secs(5))?)?),
            Some(_) => return Err("[health] takes either command or url".into()),
        };
        Ok(Hooks { validate, reload, health })
    }

    /// Whether the file names no hook at all.
    pub fn is_empty(&self) -> bool {
        self.validate.is_none() && self.reload.is_none() && self.health.is_none()
    }

    /// Runs the validate hook with `{staged}` standing for `staged`, for at most its own
    /// timeout or `budget` (what is left of the writer's prepare deadline), the shorter.
    pub fn validate(&self, staged: &Path, live: &Path, budget: Option<Duration>) -> Option<HookRun> {
        self.validate.as_ref().map(|spec| {
            let mut spec = spec.clone();
            if let Some(budget) = budget {
                spec.timeout = spec.timeout.min(budget.max(Duration::from_millis(100)));
            }
            run_command("validate", &spec, staged, live)
        })
    }

    /// Runs the reload hook, then (when it passed) one health probe: a service that
    /// reloaded into a broken state is a failed reload, with the probe's output.
    pub fn reload(&self, live: &Path) -> Option<HookRun> {
        let mut run = run_command("reload", self.reload.as_ref()?, live, live);
        if run.ok
            && let Some(probe) = self.health(live, 1, Duration::from_secs(60))
            && !probe.run.ok
        {
            run.ok = false;
            run.output
                .push_str(&format!("\n(the health probe after the reload failed)\n{}", probe.run.output));
        }
        Some(run)
    }

    /// Probes health `requests` times (at least once), timing each, and stops early once
    /// `within` has passed (`requests` then says how many ran).
    pub fn health(&self, live: &Path, requests: u32, within: Duration) -> Option<HealthProbe> {
        let spec = self.health.as_ref()?;
        let requests = requests.clamp(1, MAX_PROBES);
        let started = Instant::now();
        let mut latencies = Vec::with_capacity(requests as usize);
        let mut failures = 0;
        let mut shown: Option<HookRun> = None;
        for _ in 0..requests {
            if !latencies.is_empty() && started.elapsed() >= within {
                break;
            }
            let probe_started = Instant::now();
            let run = match spec {
                HealthSpec::Command(command) => run_command("health", command, live, live),
                HealthSpec::Url {
                    url,
                    host,
                    port,
                    path,
                    timeout,
                } => probe_url(url, host, *port, path, *timeout),
            };
            latencies.push(probe_started.elapsed().as_secs_f64() * 1000.0);
            if !run.ok {
                failures += 1;
            }
            if shown.as_ref().is_none_or(|s| s.ok) {
                shown = Some(run);
            }
        }
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
        Some(HealthProbe {
            run: shown?,
            requests: u32::try_from(latencies.len()).unwrap_or(requests),
            failures,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
        })
    }
}

fn expand(arg: &str, staged: &Path, live: &Path) -> String {
    arg.replace("{staged}", &staged.to_string_lossy())
        .replace("{live}", &live.to_string_lossy())
}

/// Reads `source` to its end into `into`, keeping at most [`MAX_OUTPUT`] bytes (the flag
/// says whether more came).
fn read_into(mut source: impl Read, into: &std::sync::Mutex<(Vec<u8>, bool)>) {
    let mut buffer = [0u8; 8192];
    loop {
        match source.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut kept = into.lock().unwrap_or_else(|p| p.into_inner());
                let room = MAX_OUTPUT.saturating_sub(kept.0.len());
                kept.0.extend_from_slice(&buffer[..n.min(room)]);
                kept.1 |= n > room;
            }
        }
    }
}

/// Runs one command hook to its end or its timeout.
pub fn run_command(hook: &str, spec: &CommandSpec, staged: &Path, live: &Path) -> HookRun {
    let argv: Vec<String> = spec.argv.iter().map(|arg| expand(arg, staged, live)).collect();
    let started = Instant::now();
    let finish = |ok: bool, exit_code: Option<i32>, timed_out: bool, output: String, truncated: bool| HookRun {
        hook: hook.to_string(),
        command: argv.clone(),
        ok,
        exit_code,
        timed_out,
        output,
        truncated,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
    };
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", PATH)
        .env("LANG", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0);
    if live.is_dir() {
        command.current_dir(live);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return finish(false, None, false, format!("cannot start {}: {err}", argv[0]), false),
    };
    // Each pipe is read on a thread of its own into a shared buffer; the thread reports
    // when the pipe ends.
    type Shared = std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>>;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        let (sender, receiver) = std::sync::mpsc::channel::<()>();
        let shared: Shared = Default::default();
        let buffer = shared.clone();
        std::thread::spawn(move || {
            if let Some(pipe) = pipe {
                read_into(pipe, &buffer);
            }
            let _ = sender.send(());
        });
        (receiver, shared)
    };
    let stdout = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = started + spec.timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    // A pipe ends when no process holds it any more. One the hook started and left
    // running (a daemon a reload restarts, `cmd &`, a process that left the group) may
    // hold it for good: its output is not waited for past a short grace, so no hook can
    // keep the store (and the agent) waiting.
    let grace = Instant::now() + OUTPUT_GRACE;
    let mut held_open = false;
    let mut collect = |(receiver, shared): (std::sync::mpsc::Receiver<()>, Shared)| {
        if receiver.recv_timeout(grace.saturating_duration_since(Instant::now())).is_err() {
            held_open = true;
        }
        let mut read = shared.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut read.0), read.1)
    };
    let (mut output, out_cut) = collect(stdout);
    let (errors, err_cut) = collect(stderr);
    // Each stream ends its own line, so no text of one runs into the other's.
    if !output.is_empty() && !output.ends_with(b"\n") && !errors.is_empty() {
        output.push(b'\n');
    }
    output.extend_from_slice(&errors);
    let truncated = out_cut || err_cut || held_open || output.len() > MAX_OUTPUT;
    output.truncate(MAX_OUTPUT);
    if held_open {
        output.extend_from_slice(b"\n(output not read to its end: a process the hook started still holds it)");
    }
    let mut text = String::from_utf8_lossy(&output).into_owned();
    if timed_out {
        text.push_str(&format!("\n(killed after {:?})", spec.timeout));
    }
    let code = status.and_then(|s| s.code());
    finish(code == Some(0) && !timed_out, code, timed_out, text, truncated)
}

/// `GET url` over plain HTTP/1.1; healthy on a 2xx answer within the timeout.
fn probe_url(url: &str, host: &str, port: u16, path: &str, timeout: Duration) -> HookRun {
    let started = Instant::now();
    let result = (|| -> Result<(u16, String), String> {
        let address = (host, port)
            .to_socket_addrs()
            .map_err(|err| format!("cannot resolve {host}: {err}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let deadline = Instant::now() + timeout;
        let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|err| format!("cannot connect: {err}"))?;
        stream.set_write_timeout(Some(timeout)).map_err(|err| err.to_string())?;
        // One write: a server that answers after the request line must not see the rest
        // of the request arrive in pieces.
        let authority = match (host.contains(':'), port) {
            (true, 80) => format!("[{host}]"),
            (true, port) => format!("[{host}]:{port}"),
            (false, 80) => host.to_string(),
            (false, port) => format!("{host}:{port}"),
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: etc-shadow-health\r\n\r\n");
        stream.write_all(request.as_bytes()).map_err(|err| format!("cannot send: {err}"))?;
        // The whole answer within the timeout: a server that trickles bytes does not keep
        // the probe (and whatever waits for it) going read after read.
        let mut answer = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stream.set_read_timeout(Some(left)).map_err(|err| err.to_string())?;
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(answer.len());
                    answer.extend_from_slice(&buffer[..n.min(room)]);
                    if room <= n {
                        break;
                    }
                }
            }
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| "the answer is not HTTP".to_string())?;
        let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
        Ok((status, body))
    })();
    let (ok, exit_code, output) = match result {
        Ok((status, body)) => (
            (200..300).contains(&status),
            Some(i32::from(status)),
            format!("HTTP {status}\n{body}"),
        ),
        Err(err) => (false, None, err),
    };
    HookRun {
        hook: "health".into(),
        command: vec![url.to_string()],
        ok,
        exit_code,
        timed_out: started.elapsed() >= timeout,
        output,
        truncated: false,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Where a hooks file is looked for a directory shadow: `DIR/<name>.toml`.
pub fn directory_hooks_file(dir: &Path, shadow: &str) -> PathBuf {
    dir.join(format!("{shadow}.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str], timeout: Duration) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout,
        }
    }

    #[test]
    fn the_contract_shape_parses() {
        let hooks = Hooks::parse(
            r#"
[validate]
command = ["nginx", "-t", "-p", "{staged}"]
timeout = "30s"

[reload]
command = ["systemctl", "reload", "nginx"]

[health]
url = "http://127.0.0.1:8080/healthz"
"#,
        )
        .unwrap();
        assert_eq!(hooks.validate.unwrap().argv, ["nginx", "-t", "-p", "{staged}"]);
        assert_eq!(hooks.reload.unwrap().timeout, Duration::from_secs(30));
        match hooks.health.unwrap() {
            HealthSpec::Url { host, port, path, .. } => assert_eq!((host.as_str(), port, path.as_str()), ("127.0.0.1", 8080, "/healthz")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        assert!(Hooks::parse("[validate]\ncommand = []").unwrap_err().contains("empty"));
        assert!(Hooks::parse("[validate]\ncommand = \"nginx -t\"").is_err());
        assert!(Hooks::parse("[validate]\ncommand = [\"x\"]\nshell = true").is_err());
        assert!(Hooks::parse("[health]\nurl = \"https://x/\"").unwrap_err().contains("http://"));
        assert!(Hooks::parse("[health]\nurl = \"http://x/\"\ncommand = [\"true\"]").is_err());
        assert!(Hooks::parse("[reload]\ncommand = [\"x\"]\ntimeout = \"forever\"").is_err());
    }

    #[test]
    fn a_command_runs_without_a_shell_with_a_scrubbed_environment() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY-free: the variable is set for this process; the hook must not see it.
        let run = run_command(
            "validate",
            &spec(
                &["/bin/sh", "-c", "echo staged=$1; env | sort; exit 3", "sh", "{staged}"],
                Duration::from_secs(10),
            ),
            dir.path(),
            dir.path(),
        );
        assert!(!run.ok);
        assert_eq!(run.exit_code, Some(3));
        assert!(run.output.contains(&format!("staged={}", dir.path().display())), "{}", run.output);
        let vars: Vec<&str> = run
            .output
            .lines()
            .filter(|l| l.contains('=') && !l.starts_with("staged="))
            .collect();
        assert!(
            vars.iter()
                .all(|v| ["PATH=", "LANG=", "PWD=", "SHLVL=", "_="].iter().any(|p| v.starts_with(p))),
            "{vars:?}"
        );
        // No shell: a metacharacter is an argument like any other.
        let literal = run_command(
            "validate",
            &spec(&["/bin/echo", "a;", "$HOME", "|b"], Duration::from_secs(10)),
            dir.path(),
            dir.path(),
        );
        assert!(literal.ok);
        assert_eq!(literal.output.trim(), "a; $HOME |b");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let run = run_command(
            "validate",
            &spec(&["/bin/sh", "-c", "echo before; sleep 30 & sleep 30"], Duration::from_millis(300)),
            dir.path(),
            dir.path(),
        );
        assert!(started.elapsed() < Duration::from_secs(10), "the group was not killed");
        assert!(!run.ok && run.timed_out && run.exit_code.is_none());
        assert!(run.output.starts_with("before"), "{}", run.output);
    }

    #[test]
    fn a_process_the_hook_left_running_does_not_keep_it_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        // A reload that starts a daemon holding its output, and ends at once.
        let run = run_command(
            "reload",
            &spec(&["/bin/sh", "-c", "echo started; sleep 60 & exit 0"], Duration::from_secs(30)),
            dir.path(),
            dir.path(),
        );
        assert!(started.elapsed() < Duration::from_secs(10), "waited for the daemon's output");
        assert!(run.ok && run.truncated, "{run:?}");
        assert!(run.output.starts_with("started"), "{}", run.output);
    }

    #[test]
    fn a_validate_hook_is_cut_to_the_writers_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Hooks::parse("[validate]\ncommand = [\"/bin/sleep\", \"30\"]\ntimeout = \"5m\"").unwrap();
        let started = Instant::now();
        let run = hooks.validate(dir.path(), dir.path(), Some(Duration::from_millis(300))).unwrap();
        assert!(run.timed_out && started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_health_url_that_trickles_its_answer_ends_at_its_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n");
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(100));
                    if stream.write_all(b"x").is_err() {
                        break;
                    }
                }
            }
        });
        let hooks = Hooks::parse(&format!("[health]\nurl = \"http://127.0.0.1:{port}/\"\ntimeout = \"1s\"")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        hooks.health(dir.path(), 1, Duration::from_secs(60)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    }

    #[test]
    fn an_ipv6_health_url_parses_with_and_without_a_port() {
        for (url, port) in [("http://[::1]/healthz", 80), ("http://[::1]:8080/healthz", 8080)] {
            match url_spec(url, Duration::from_secs(1)).unwrap() {
                HealthSpec::Url { host, port: p, .. } => assert_eq!((host.as_str(), p), ("::1", port)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn output_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_command(
            "validate",
            &spec(
                &["/bin/sh", "-c", "head -c 10000000 /dev/zero | tr '\\0' x"],
                Duration::from_secs(20),
            ),
            dir.path(),
            dir.path(),
        );
        assert!(run.ok);
        assert!(run.truncated);
        assert_eq!(run.output.len(), MAX_OUTPUT);
    }

    #[test]
    fn a_missing_program_is_a_failed_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_command(
            "reload",
            &spec(&["/nonexistent/reload"], Duration::from_secs(1)),
            dir.path(),
            dir.path(),
        );
        assert!(!run.ok);
        assert!(run.output.contains("cannot start"));
    }

    #[test]
    fn a_hooks_file_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("hooks.toml");
        std::fs::write(&file, "[reload]\ncommand = [\"true\"]\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Hooks::load(&file).is_ok());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(Hooks::load(&file).unwrap_err().contains("writable by group or others"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Hooks::load(&file).unwrap_err().contains("directory"));
    }

    #[test]
    fn a_health_url_is_probed_with_latencies() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for (i, stream) in listener.incoming().take(3).enumerate() {
                let mut stream = stream.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let status = if i == 2 { "503 Service Unavailable" } else { "200 OK" };
                let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        let hooks = Hooks::parse(&format!("[health]\nurl = \"http://127.0.0.1:{port}/healthz\"")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let probe = hooks.health(dir.path(), 3, Duration::from_secs(60)).unwrap();
        server.join().unwrap();
        assert_eq!((probe.requests, probe.failures), (3, 1), "{probe:?}");
        assert!(!probe.run.ok);
        assert_eq!(probe.run.exit_code, Some(503));
        assert!(probe.p99_ms >= probe.p50_ms);
    }
}
