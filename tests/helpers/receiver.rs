//! A webhook receiver for the notification tests: a small HTTP/1.1 server
//! on 127.0.0.1 that verifies each request's `Stategate-Signature` with
//! the shared secret (HMAC-SHA256 over `<t>.<body>`, as a real receiver
//! would, written here independently of stategate's code), and records
//! every request. It can be told to answer 500, or to hang up or hang
//! without answering, to play a receiver that is down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200.
    Up = 0,
    /// 500.
    Failing = 1,
    /// Closes the connection without an answer.
    HangUp = 2,
    /// Reads the request and never answers (until the connection is
    /// closed by the sender).
    Hang = 3,
}

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether `Stategate-Signature` was present and matched the secret.
    pub signed: bool,
    /// The answer given (0 when none was).
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "a body that is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The event id of a request: its `Stategate-Event-Id` header.
    pub fn event_id(&self) -> String {
        self.header("Stategate-Event-Id")
            .expect("every notification names its event")
            .to_string()
    }
}

/// A running receiver; it stops with the test process.
pub struct Receiver {
    pub port: u16,
    secret: Vec<u8>,
    mode: Arc<AtomicU8>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// A receiver verifying signatures with `secret`.
    pub fn start(secret: &str) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().unwrap().port();
        let receiver = Receiver {
            port,
            secret: secret.as_bytes().to_vec(),
            mode: Arc::new(AtomicU8::new(Mode::Up as u8)),
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let (secret, mode, received) = (
            receiver.secret.clone(),
            Arc::clone(&receiver.mode),
            Arc::clone(&receiver.received),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (secret, mode, received) =
                    (secret.clone(), Arc::clone(&mode), Arc::clone(&received));
                std::thread::spawn(move || {
                    let _ = serve(stream, &secret, &mode, &received);
                });
            }
        });
        receiver
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests answered 200 on `path`.
    pub fn delivered(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.answered == 200 && r.path == format!("/{path}"))
            .collect()
    }

    /// Waits up to `within` until `done` holds for the requests delivered
    /// on `path`; returns them either way.
    pub fn wait_for(
        &self,
        path: &str,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.delivered(path);
            if done(&got) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(
    stream: TcpStream,
    secret: &[u8],
    mode: &AtomicU8,
    received: &Mutex<Vec<Received>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let signed = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("stategate-signature"))
        .is_some_and(|(_, v)| verify(secret, v, &body));
    let mode = mode.load(Ordering::SeqCst);
    let status = match mode {
        m if m == Mode::Up as u8 => 200,
        m if m == Mode::Failing as u8 => 500,
        _ => 0,
    };
    received.lock().unwrap().push(Received {
        path,
        headers,
        body,
        signed,
        answered: status,
    });
    let mut stream = stream;
    match mode {
        m if m == Mode::Hang as u8 => {
            // Held open until the sender gives up and closes it.
            let mut sink = [0u8; 64];
            let _ = reader.get_mut().read(&mut sink);
            Ok(())
        }
        m if m == Mode::HangUp as u8 => Ok(()),
        _ => write!(
            stream,
            "HTTP/1.1 {status} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            if status == 200 {
                "OK"
            } else {
                "Internal Server Error"
            }
        ),
    }
}

/// Checks `t=<seconds>,v1=<hex>` against HMAC-SHA256(secret, "<t>.<body>"),
/// and that the time is within five minutes of now.
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(seconds) = t.parse::<u64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(seconds) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1
}
