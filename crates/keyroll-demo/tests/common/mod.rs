//! What the service tests share: keyroll-webhooks's test receiver.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The secret the service signs webhooks with.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// keyroll-webhooks's test receiver: checks each delivery with Python's
/// `standardwebhooks` and logs it, on `port`.
pub struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Receiver {
    pub fn start(port: u16) -> Receiver {
        let python = std::env::var("KEYROLL_STANDARDWEBHOOKS").unwrap_or_else(|_| "python3".into());
        let script = include_str!("../../../keyroll-webhooks/tests/receiver.py");
        let mut child = Command::new(python)
            .args(["-c", script, WEBHOOK_SECRET, &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), port.to_string());
        Receiver(child)
    }

    pub fn log(port: u16) -> Vec<Value> {
        let text = ureq::get(format!("http://127.0.0.1:{port}/log"))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
