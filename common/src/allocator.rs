//! Freed memory kept for the next step. A chapter-6 shard allocates its
//! patch matrices (MBs: 6.4 MB for ch6-conv2's second layer at 50 samples)
//! every step; glibc gives blocks that large back to the kernel when they
//! are freed and takes them again, zeroed page by page, at the next step.
//! A worker then spent ~15% of its time in page faults and zeroing. With
//! the thresholds raised, the blocks are reused from the heap instead.

/// Raises glibc's mmap and trim thresholds (on glibc; elsewhere nothing),
/// so that blocks of up to 32 MB are reused rather than returned to the
/// kernel. Call once at start-up, before the process allocates much.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists (each binary's first statement).
    unsafe {
        // 32 MB is the largest mmap threshold glibc accepts on 64-bit.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
