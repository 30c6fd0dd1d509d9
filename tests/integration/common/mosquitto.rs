//! A mosquitto process of the test's own, on a free loopback port.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The broker process; killed when dropped.
pub struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The mosquitto binary, if installed.
pub fn mosquitto_binary() -> Option<String> {
    ["mosquitto", "/usr/sbin/mosquitto"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        .map(str::to_string)
}

/// Starts mosquitto on a free port.
pub fn start_mosquitto(bin: &str) -> (Mosquitto, u16) {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if let Some(m) = start_mosquitto_on(bin, port) {
            return (m, port);
        }
    }
    panic!("mosquitto did not start");
}

/// Starts mosquitto on `port` (e.g. again after killing it); `None` if it does not come up.
pub fn start_mosquitto_on(bin: &str, port: u16) -> Option<Mosquitto> {
    start_mosquitto_with(bin, port, &["-p", &port.to_string()])
}

/// Starts mosquitto with a configuration file that listens on `port`.
pub fn start_mosquitto_conf(bin: &str, port: u16, conf: &std::path::Path) -> Option<Mosquitto> {
    start_mosquitto_with(bin, port, &["-c", conf.to_str().unwrap()])
}

impl Mosquitto {
    /// Stops the broker the way an operator would (SIGTERM: it saves its persistence
    /// database) and waits for it to exit.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn start_mosquitto_with(bin: &str, port: u16, args: &[&str]) -> Option<Mosquitto> {
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let guard = Mosquitto(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(guard);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A `mosquitto_sub` client binary, if installed.
pub fn mosquitto_sub() -> Option<&'static str> {
    Command::new("mosquitto_sub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .map(|_| "mosquitto_sub")
}
