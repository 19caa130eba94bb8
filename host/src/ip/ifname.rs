//! The one interface-name rule: what the kernel accepts as a link name.

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;

/// Linux interface names: 1–15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
/// Returns the reason on failure so callers can name the field.
pub fn validate_ifname(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "interface name {name:?} is {} bytes, longer than {MAX_IFNAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("interface name {name:?} contains {c:?}"));
    }
    Ok(())
}
