//! End to end through mosquitto, a broker that is not ours. The test starts its own
//! `mosquitto -p <free port>` on loopback; it skips (with a message) where mosquitto
//! is not installed. `.ci/run` installs it, so CI always runs it.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto_binary() -> Option<String> {
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

fn start_mosquitto(bin: &str) -> (Mosquitto, u16) {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let guard = Mosquitto(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (guard, port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("mosquitto did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_through_mosquitto() {
    let Some(bin) = mosquitto_binary() else {
        eprintln!(
            "SKIPPED: mosquitto is not installed (apt-get install mosquitto); .ci/run installs it"
        );
        return;
    };
    let (_broker, port) = start_mosquitto(&bin);
    let url = forewarn::mqtt::BrokerUrl::new("127.0.0.1", port);
    common::scenario_over_broker(&url, "mosquitto").await;
}
