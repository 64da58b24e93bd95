//! Memory accounting for trials on the CPU.
//!
//! Two guards keep a runaway trial from pushing the machine into swap or the
//! kernel's OOM killer: the parent samples the worker's RSS and kills it past
//! the limit, and inside the worker a counting allocator refuses heap
//! allocations past the limit, which aborts the worker at once with Rust's
//! "memory allocation of N bytes failed" (classified as out of memory).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// The system allocator with a byte count and an optional hard cap.
pub struct CountingAllocator;

static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
static PEAK_BYTES: AtomicU64 = AtomicU64::new(0);
/// `u64::MAX` means no cap; only a trial worker sets one.
static HEAP_CAP: AtomicU64 = AtomicU64::new(u64::MAX);

impl CountingAllocator {
    fn admit(size: usize) -> bool {
        let size = size as u64;
        let live = LIVE_BYTES.fetch_add(size, Ordering::Relaxed) + size;
        if live > HEAP_CAP.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(size, Ordering::Relaxed);
            report_refusal(size, live - size);
            return false;
        }
        PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
        true
    }

    fn release(size: usize) {
        LIVE_BYTES.fetch_sub(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are
// bookkeeping only, and a refused allocation returns null as the contract
// allows.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            Self::release(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() {
            Self::release(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        Self::release(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !Self::admit(new_size - old) {
            return std::ptr::null_mut();
        }
        let new_ptr = unsafe { System.realloc(ptr, layout, new_size) };
        if new_ptr.is_null() {
            if new_size > old {
                Self::release(new_size - old);
            }
        } else if new_size < old {
            Self::release(old - new_size);
        }
        new_ptr
    }
}

/// Prefix of the line a refused allocation writes on stderr; the parent
/// reads the sizes from it, since the refused bytes never became resident.
pub const REFUSAL_MARKER: &str = "batchd-worker: heap cap refused";

/// Writes `REFUSAL_MARKER N bytes with M bytes live` to stderr without
/// allocating (we are inside the allocator).
fn report_refusal(size: u64, live: u64) {
    let mut buffer = [0u8; 160];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buffer.len() - len);
        buffer[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(REFUSAL_MARKER.as_bytes());
    put(b" ");
    put(decimal(size, &mut [0u8; 20]));
    put(b" bytes with ");
    put(decimal(live, &mut [0u8; 20]));
    put(b" bytes live\n");
    // SAFETY: write(2) to stderr from a stack buffer.
    unsafe {
        libc::write(2, buffer.as_ptr().cast(), len);
    }
}

fn decimal(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &digits[start..]
}

/// Parses a refusal line: `(refused bytes, live bytes)`.
pub fn parse_refusal(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().rev().find(|l| l.contains(REFUSAL_MARKER))?;
    let mut words = line[line.find(REFUSAL_MARKER)? + REFUSAL_MARKER.len()..].split_whitespace();
    let refused = words.next()?.parse().ok()?;
    let live = words.nth(2)?.parse().ok()?;
    Some((refused, live))
}

/// Caps this process's heap. Called once by a trial worker.
pub fn set_heap_cap(bytes: u64) {
    HEAP_CAP.store(bytes, Ordering::Relaxed);
}

/// The most heap this process has held at once.
pub fn peak_heap_bytes() -> u64 {
    PEAK_BYTES.load(Ordering::Relaxed)
}

/// Current and peak resident set size of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rss {
    pub current_bytes: u64,
    /// VmHWM: the high-water mark, which the kernel keeps for us.
    pub peak_bytes: u64,
}

pub fn read_rss(pid: u32) -> Option<Rss> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

pub fn own_rss() -> Option<Rss> {
    parse_status(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn parse_status(text: &str) -> Option<Rss> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(Rss {
        current_bytes: field("VmRSS:")?,
        peak_bytes: field("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parsing_reads_rss_and_high_water_mark() {
        let text = "Name:\tbatchd\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        let rss = parse_status(text).unwrap();
        assert_eq!(rss.current_bytes, 1024 * 1024);
        assert_eq!(rss.peak_bytes, 2048 * 1024);
    }

    #[test]
    fn refusal_lines_round_trip() {
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
        assert_eq!(decimal(1234567890123, &mut [0; 20]), b"1234567890123");
        let line = format!("noise\n{REFUSAL_MARKER} 67108864 bytes with 33554432 bytes live\nmemory allocation of 67108864 bytes failed\n");
        assert_eq!(parse_refusal(&line), Some((67108864, 33554432)));
    }

    #[test]
    fn own_rss_is_readable_and_ordered() {
        let rss = own_rss().unwrap();
        assert!(rss.current_bytes > 0 && rss.peak_bytes >= rss.current_bytes);
    }

    #[test]
    fn the_allocator_counts_live_bytes() {
        let before = peak_heap_bytes();
        let block = vec![0u8; 8 << 20];
        assert!(peak_heap_bytes() >= before.max(8 << 20));
        drop(block);
    }
}
