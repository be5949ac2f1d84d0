//! The manifest reader (both sides keep manifests in this format), and
//! the binary search by address that references are confirmed with:
//! neither panics on any file, and a search of a file the reader
//! accepts finds exactly the reader's entry at that address.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::manifest::{entry_count, find_entry, ManifestReader, ENTRY_LEN, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let mut all = Vec::new();
    let mut whole = false;
    if let Ok(r) = ManifestReader::new(data) {
        whole = true;
        for e in r {
            match e {
                Ok(e) => all.push(e),
                Err(_) => {
                    whole = false;
                    break;
                }
            }
        }
    }
    let Some(head) = data.get(..HEADER_LEN) else {
        return;
    };
    let head: [u8; HEADER_LEN] = head.try_into().unwrap();
    let cs = u32::from_le_bytes(head[8..].try_into().unwrap());
    let Ok(n) = entry_count(&head, data.len() as u64, cs) else {
        return;
    };
    let read = |off: u64, b: &mut [u8; ENTRY_LEN]| {
        b.copy_from_slice(&data[off as usize..off as usize + ENTRY_LEN]);
        Ok(())
    };
    // Any file: no panic, whatever it holds.
    let _ = find_entry(n, all.first().map_or(0, |e| e.addr), read);
    if whole {
        for e in all.iter().take(8) {
            assert_eq!(find_entry(n, e.addr, read).unwrap(), Some(*e));
        }
    }
});
