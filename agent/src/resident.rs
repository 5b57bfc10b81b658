//! Keeping startup-only code out of the agent's resident memory.
//!
//! The agent binary carries ~25 MB of machine code, most of it tract's. Loading, optimising and
//! validating the power model at start runs code spread over most of it, and the kernel maps the
//! file pages around every page fault (fault-around, 64 KiB), so after startup ~18 MiB of clean,
//! file-backed code pages stay mapped although the steady-state loop runs in ~2 MiB of them; the
//! agent's own (anonymous) memory is under 2 MiB. Once the agent is warm,
//! [`release_startup_pages`] asks the kernel to reclaim the executable's read-only mappings
//! (`madvise(MADV_PAGEOUT)`, Linux ≥ 5.4). Nothing is lost: the pages are clean copies of the
//! file, and whatever the steady state still needs is mapped again on its next use.

/// Advises the kernel to reclaim the pages of this executable's read-only mappings: its code and
/// the read-only data before it (not the RELRO part after it, which holds relocated, anonymous
/// copies). Returns the bytes advised. An error (e.g. a kernel older than 5.4) changes nothing.
#[cfg(target_os = "linux")]
pub fn release_startup_pages() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for (start, end) in readonly_file_mappings(&maps, &exe) {
        let len = end - start;
        // SAFETY: [start, end) is a mapping of this process (from /proc/self/maps); MADV_PAGEOUT
        // only drops clean page-cache pages from it, which fault back in unchanged when used.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        advised += len;
    }
    Ok(advised)
}

#[cfg(not(target_os = "linux"))]
pub fn release_startup_pages() -> std::io::Result<usize> {
    Ok(0)
}

/// `(start, end)` of the mappings of `exe` in a `/proc/<pid>/maps` text that are executable or
/// that are read-only and start at file offset 0 (headers, dynamic symbols, rodata).
fn readonly_file_mappings(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
            // Device and inode, then the path (which may contain spaces) up to the line's end.
            fields.nth(1)?;
            if fields.next().is_none() || !line.trim_end().ends_with(&format!(" {exe}")) {
                return None;
            }
            let wanted = perms == "r-xp" || (perms == "r--p" && offset.bytes().all(|b| b == b'0'));
            if !wanted {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_code_and_leading_readonly_data_are_picked() {
        let maps = "\
55d0c0000000-55d0c06a9000 r--p 00000000 fe:00 5449862    /opt/wattwise-agent
55d0c06a9000-55d0c1e78000 r-xp 006a8000 fe:00 5449862    /opt/wattwise-agent
55d0c1e78000-55d0c1f6d000 r--p 01e76000 fe:00 5449862    /opt/wattwise-agent
55d0c1f6d000-55d0c1f70000 rw-p 01f6b000 fe:00 5449862    /opt/wattwise-agent
55d0c3000000-55d0c3060000 rw-p 00000000 00:00 0          [heap]
7f0000000000-7f0000026000 r--p 00000000 fe:00 326279     /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000026000-7f000017c000 r-xp 00026000 fe:00 326279     /usr/lib/x86_64-linux-gnu/libc.so.6
";
        assert_eq!(
            readonly_file_mappings(maps, "/opt/wattwise-agent"),
            vec![
                (0x55d0c0000000, 0x55d0c06a9000),
                (0x55d0c06a9000, 0x55d0c1e78000)
            ]
        );
        assert!(readonly_file_mappings(maps, "/other").is_empty());
        assert!(
            readonly_file_mappings(maps, "wattwise-agent").is_empty(),
            "whole path only"
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn releasing_advises_this_executable_and_the_code_keeps_running() {
        let advised = release_startup_pages().expect("MADV_PAGEOUT needs Linux 5.4 or later");
        assert!(advised > 0, "no mapping of /proc/self/exe found");
        // The released code and data fault back in on use.
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        assert_eq!(format!("{:?}", Some(1.5)), "Some(1.5)");
    }
}
