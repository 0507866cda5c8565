//! Names of things banger stores (images, kernels): what is allowed, checked in one place.
//!
//! A name becomes a directory under the state directory, so the rules exist to keep it there:
//! letters, digits, `.`, `_` and `-`; at most 64 bytes; it starts with a letter or a digit,
//! which rules out `.`, `..`, hidden names (the store's own `.staging-*` directories), and
//! names that look like command-line options (`-x`).

/// Longest name accepted.
pub const MAX_NAME_BYTES: usize = 64;

/// Checks a kernel or image name. `what` is "kernel" or "image", for the message.
pub fn validate(what: &str, name: &str) -> Result<(), String> {
    let hint = "use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters";
    if name.is_empty() {
        return Err(format!("the {what} name is empty; {hint}"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} name {name:?} is {} bytes long; {hint}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{what} name {name:?} contains {bad:?}, which is not allowed; {hint}"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "{what} name {name:?} must start with a letter or digit; {hint}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["debian", "debian-12", "6.1.0_cloud", "a", &"x".repeat(64)] {
            assert!(validate("image", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_names_that_escape_or_hide() {
        for name in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "_x",
            "sp ace",
            "é",
            &"x".repeat(65),
        ] {
            let error = validate("kernel", name).unwrap_err();
            assert!(
                error.contains("kernel name") || error.contains("is empty"),
                "{error}"
            );
        }
    }
}
