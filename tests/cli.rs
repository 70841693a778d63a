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
    let dir = std::env::temp_dir().join(format!("cxb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut child = cxb()
        .args(["core", "--listen", "127.0.0.1:0", "--workers", "2", "--slots-per-worker", "4", "--no-pin", "--demo-bots"])
        .arg("--registry")
        .arg(dir.join("slots"))
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"))
        .arg("--data-dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cxb core starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut port = 0;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(rest) = line.trim().strip_prefix("health      http://127.0.0.1:") {
            port = rest.trim_end_matches("/health").parse().expect("port");
            break;
        }
    }
    assert_ne!(port, 0, "cxb core printed where to connect");
    Core { child, port, dir }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn status_reads_the_registry_from_another_process() {
    let core = start_core();
    let stream = TcpStream::connect(("127.0.0.1", core.port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let (mut ws, _) = tungstenite::client::client(format!("ws://127.0.0.1:{}/ws/echo", core.port), stream).map_err(|_| ()).expect("upgrade");
    ws.send(Message::text(r#"{"event":"start","streamSid":"MZ1","start":{"streamSid":"MZ1"}}"#)).expect("start");
    // 160 bytes of mu-law silence (0xFF): 53 groups of "////" and a final "/w==".
    let payload = format!("{}/w==", "////".repeat(53));
    ws.send(Message::text(format!(r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{payload}"}}}}"#))).expect("media");
    let _ = ws.read().expect("echo");

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
