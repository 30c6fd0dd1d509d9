//! Process-wide tuning of glibc's allocator for stream processing.

/// Bytes of freed memory at the top of the heap that glibc keeps for later allocations
/// before returning them to the system.
pub const KEEP_FREED_BYTES: usize = 64 << 20;

/// Keeps freed heap memory in the process (up to [`KEEP_FREED_BYTES`] at the top of the
/// heap, and allocations under 32 MiB on the heap rather than in mappings of their own)
/// instead of handing it back to the system at every free.
///
/// With glibc's defaults, memory freed at the top of the heap beyond 128 KiB goes back to
/// the kernel, and the next window's aggregate faults the same pages in again, zeroed:
/// closing windows every batch, that churn took about a quarter of the streaming
/// runtime's CPU time (`benches/windowed.rs`, 10 devices). This leaves the peak resident
/// size as it was (the peak is reached either way); the resident size just does not fall
/// back after it. The `forewarn` command calls it at start; a program embedding
/// Forewarn may call it once, early (it changes the whole process's allocator). It does
/// nothing where the allocator is not glibc's (musl, or a `#[global_allocator]` of your
/// own, which makes its own choices).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's thresholds; any values are valid.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREED_BYTES as libc::c_int);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
    }
}
