//! A hostile receiver for the resource-bound tests: it writes a prepared
//! prefix (hello and replies, in the order the agent will read them), then
//! misbehaves in one of these ways, never reading what the agent sends:
//!
//! - `endless-manifest PREFIX CHUNK_SIZE`: `Data` parts of a valid manifest
//!   that never ends (ascending entries, 1 MiB a part, no `StreamEnd`);
//! - `trickle PREFIX FILE MS`: the bytes of FILE one at a time, MS apart;
//! - `paced PREFIX FILE MS`: the frames in FILE (whole frames back to
//!   back) one at a time, each sent at once, MS apart, then exit.
//!
//! Then it sleeps; it exits when the agent closes the pipe.

use protocol::frame::{encode_frame, FrameKind, HEADER_LEN, TRAILER_LEN};
use protocol::message::{encode_reply, Reply, DATA_PART};
use std::io::Write;
use std::time::Duration;

fn out(bytes: &[u8]) {
    let mut o = std::io::stdout().lock();
    if o.write_all(bytes).and_then(|_| o.flush()).is_err() {
        // The agent has gone: done.
        std::process::exit(0);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, prefix) = (args[1].as_str(), &args[2]);
    out(&std::fs::read(prefix).expect("prefix file"));
    let ms = |i: usize| Duration::from_millis(args[i].parse().expect("milliseconds"));
    match mode {
        "endless-manifest" => {
            let cs: u64 = args[3].parse().expect("chunk size");
            let mut stream = b"SBKMAN01".to_vec();
            stream.extend_from_slice(&(cs as u32).to_le_bytes());
            let mut addr = 0u64;
            loop {
                while stream.len() < DATA_PART {
                    stream.extend_from_slice(&addr.to_le_bytes());
                    stream.push(1);
                    stream.extend_from_slice(&[0x33; 32]);
                    addr += cs;
                }
                let rest = stream.split_off(DATA_PART);
                let reply = encode_reply(&Reply::Data(stream));
                out(&encode_frame(FrameKind::Reply, &reply).expect("frame"));
                stream = rest;
            }
        }
        "trickle" => {
            let data = std::fs::read(&args[3]).expect("trickle file");
            for b in data {
                out(&[b]);
                std::thread::sleep(ms(4));
            }
        }
        "paced" => {
            let data = std::fs::read(&args[3]).expect("frames file");
            let mut at = 0;
            while at < data.len() {
                let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
                let end = at + HEADER_LEN + len as usize + TRAILER_LEN;
                std::thread::sleep(ms(4));
                out(&data[at..end]);
                at = end;
            }
            // An honest, slow receiver: done once everything is sent.
            return;
        }
        m => panic!("unknown mode {m}"),
    }
    std::thread::sleep(Duration::from_secs(3600));
}
