//! The `cxb` binary end to end: `cxb core` serves a call while `cxb core status`, a separate
//! process, reads the slot registry from shared memory and `cxb core ctl` drives the control
//! socket.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tungstenite::Message;

struct Core {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Core {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cxb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cxb"))
}

fn start_core() -> Core {
    start_core_with(&[], Stdio::null(), "status")
}

fn start_core_with(extra: &[&str], stderr: Stdio, name: &str) -> Core {
    let dir = std::env::temp_dir().join(format!("cxb-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut child = cxb()
        .args(["core", "--listen", "127.0.0.1:0", "--workers", "2", "--slots-per-worker", "4", "--no-pin", "--demo-bots"])
        .arg("--registry")
        .arg(dir.join("slots"))
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"))
        .arg("--data-dir")
        .arg(&dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("cxb core starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut port = 0;
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    for line in lines.by_ref() {
        if let Some(rest) = line.trim().strip_prefix("health      http://127.0.0.1:") {
            port = rest.trim_end_matches("/health").parse().expect("port");
            break;
        }
    }
    assert_ne!(port, 0, "cxb core printed where to connect");
    // The rest of what it prints is read and dropped, as a terminal would take it.
    std::thread::spawn(move || lines.for_each(drop));
    Core { child, port, dir }
}

fn echo_call(port: u16) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let (mut ws, _) = tungstenite::client::client(format!("ws://127.0.0.1:{port}/ws/echo"), stream).map_err(|_| ()).expect("upgrade");
    ws.send(Message::text(r#"{"event":"start","streamSid":"MZ1","start":{"streamSid":"MZ1"}}"#)).expect("start");
    // 160 bytes of mu-law silence (0xFF): 53 groups of "////" and a final "/w==".
    let payload = format!("{}/w==", "////".repeat(53));
    ws.send(Message::text(format!(r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{payload}"}}}}"#))).expect("media");
    let _ = ws.read().expect("echo");
    ws
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn status_reads_the_registry_from_another_process() {
    let core = start_core();
    let _ws = echo_call(core.port);

    let registry = core.dir.join("slots");
    let status = || run(cxb().args(["core", "status", "--slots", "--registry"]).arg(&registry));
    let text = status();
    let active: usize = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 7 && f[0].parse::<usize>().is_ok()).then(|| f[3].parse::<usize>().unwrap_or(0))
        })
        .sum();
    assert_eq!(active, 1, "one active call across the workers:\n{text}");
    assert!(text.contains("bot echo"), "the slot names its bot:\n{text}");

    let ctl = core.dir.join("ctl.sock");
    let answer = run(cxb().args(["core", "ctl", r#"{"cmd":"reserve","ttl_ms":60000}"#, "--socket"]).arg(&ctl));
    assert!(answer.contains(r#""ok":true"#), "{answer}");
    let start = Instant::now();
    while !status().contains("reserved ") && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(status().contains("reserved "), "the reservation shows in the registry");
}

#[test]
fn json_logs_carry_each_call_in_its_span_and_obey_the_filter() {
    let mut core = start_core_with(&["--log-format", "json", "--log", "warn,cxb_engine=debug"], Stdio::piped(), "logs");
    let mut ws = echo_call(core.port);
    ws.send(Message::text(r#"{"event":"stop","streamSid":"MZ1"}"#)).expect("stop");
    while ws.read().is_ok() {}
    let stderr = core.child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut ended = None;
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        if v["fields"]["message"] == "call ended" {
            ended = Some(v.clone());
            break;
        }
        lines.push(line);
    }
    let ended = ended.unwrap_or_else(|| panic!("no `call ended` line in:\n{}", lines.join("\n")));
    assert_eq!(ended["level"], "DEBUG");
    assert_eq!(ended["fields"]["reason"], "stopped");
    assert_eq!(ended["span"]["name"], "call");
    assert_eq!(ended["span"]["bot"], "echo");
    assert_eq!(ended["span"]["transport"], "twilio");
    assert!(lines.iter().any(|l| l.contains("worker running")), "the workers' start is logged: {lines:?}");
    assert!(!lines.iter().any(|l| l.contains("\"INFO\"") && !l.contains("cxb_engine")), "other crates log only warnings: {lines:?}");
}

/// Fleet tokens from the command line: made (the value printed once), listed without their
/// values, revoked by id.
#[test]
fn fleet_tokens_are_listed_without_their_values_and_revoked_by_id() {
    let dir = std::env::temp_dir().join(format!("cxb-cli-tokens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = ["--data-dir", dir.to_str().expect("utf-8")];
    let token = run(cxb().args(["admin", "create-fleet-token", "--name", "edge-1", "--scope", "engine", "--host-id", "edge-1:8080"]).args(data));
    let token = token.trim();
    assert!(token.starts_with("cxf"), "{token}");
    run(cxb().args(["admin", "create-fleet-token", "--name", "dialler-a", "--scope", "dialler"]).args(data));
    let listed = run(cxb().args(["admin", "list-fleet-tokens"]).args(data));
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!((rows[0][1], rows[0][2], rows[0][3]), ("edge-1", "engine", "edge-1:8080"), "{listed}");
    assert_eq!((rows[1][1], rows[1][2], rows[1][3]), ("dialler-a", "dialler", "-"), "{listed}");
    assert!(!listed.contains(token), "never the value");
    let id = rows[0][0].to_string();
    assert!(run(cxb().args(["admin", "revoke-fleet-token", &id]).args(data)).contains(&id));
    let listed = run(cxb().args(["admin", "list-fleet-tokens"]).args(data));
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let again = cxb().args(["admin", "revoke-fleet-token", &id]).args(data).output().expect("runs");
    assert!(!again.status.success(), "a token revoked twice is an error");
    let _ = std::fs::remove_dir_all(&dir);
}
