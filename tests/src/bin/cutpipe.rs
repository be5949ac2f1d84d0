//! `cutpipe IN OUT PROGRAM ARGS...`: runs PROGRAM with its stdin and stdout
//! relayed without buffering, and cuts the whole connection once IN bytes
//! went to it or OUT bytes came from it (`-` for no limit): the caller sees
//! end of stream and a broken pipe, PROGRAM sees end of input, as when a
//! qrexec or ssh connection drops. Exits after PROGRAM has exited, so the
//! caller can inspect what PROGRAM left behind.
//! (`head -c` is no substitute: it holds back partial input, and a shell
//! pipeline keeps the caller's pipes open.)

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

fn limit(s: &str) -> u64 {
    if s == "-" {
        u64::MAX
    } else {
        s.parse().expect("limit is a number or -")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(args.len() >= 4, "usage: cutpipe IN OUT PROGRAM ARGS...");
    let (lim_in, lim_out) = (limit(&args[1]), limit(&args[2]));
    let mut child = Command::new(&args[3])
        .args(&args[4..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let child_in: Arc<Mutex<Option<ChildStdin>>> = Arc::new(Mutex::new(child.stdin.take()));
    let mut child_out = child.stdout.take().unwrap();
    let cut = Arc::new(AtomicBool::new(false));

    let do_cut = {
        let child_in = Arc::clone(&child_in);
        let cut = Arc::clone(&cut);
        move || {
            if !cut.swap(true, Ordering::SeqCst) {
                child_in.lock().unwrap().take(); // PROGRAM sees end of input
                                                 // The caller sees end of stream and, on its next write, EPIPE.
                let null = std::fs::File::open("/dev/null").unwrap();
                unsafe {
                    nix_dup2(null.as_raw_fd(), 1);
                    nix_dup2(null.as_raw_fd(), 0);
                }
            }
        }
    };
    let cut_in = do_cut.clone();
    let cut_flag = Arc::clone(&cut);
    let ci = Arc::clone(&child_in);
    std::thread::spawn(move || {
        let mut inp = std::io::stdin().lock();
        let mut buf = vec![0u8; 1 << 16];
        let mut left = lim_in;
        if left == 0 {
            cut_in();
        }
        while left > 0 && !cut_flag.load(Ordering::SeqCst) {
            let want = (buf.len() as u64).min(left) as usize;
            let n = match inp.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut g = ci.lock().unwrap();
            let Some(w) = g.as_mut() else { break };
            if w.write_all(&buf[..n]).is_err() {
                break;
            }
            drop(g);
            left -= n as u64;
            if left == 0 {
                cut_in();
            }
        }
        // End of the caller's input: pass it on.
        ci.lock().unwrap().take();
    });
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = lim_out;
    if left == 0 {
        do_cut();
    }
    loop {
        let n = match child_out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            continue; // drain, so PROGRAM is never blocked on us
        }
        let k = (n as u64).min(left) as usize;
        if out.write_all(&buf[..k]).and_then(|_| out.flush()).is_err() {
            do_cut();
            continue;
        }
        left -= k as u64;
        if left == 0 {
            do_cut();
        }
    }
    let _ = child.wait();
}

extern "C" {
    fn dup2(old: i32, new: i32) -> i32;
}

unsafe fn nix_dup2(old: i32, new: i32) {
    dup2(old, new);
}
