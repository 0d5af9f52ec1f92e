//! Machine presets: named sets of defaults (`machine-presets/*.toml`, built
//! into the binary) that command-line flags override.

use serde::Deserialize;

/// The presets shipped with Vireo: (name, TOML text).
const BUILTIN: &[(&str, &str)] = &[(
    "linux-direct",
    include_str!("../../machine-presets/linux-direct.toml"),
)];

/// A machine preset: every field optional; absent fields keep the built-in
/// defaults.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Human-readable name.
    pub name: Option<String>,
    /// One-line description.
    pub description: Option<String>,
    /// Guest RAM, e.g. "512M".
    pub memory: Option<String>,
    /// Number of vCPUs.
    pub smp: Option<usize>,
    /// Accelerator: "auto", "soft" or "kvm".
    pub accel: Option<String>,
    /// Kernel command line.
    pub append: Option<String>,
    /// Exit instead of rebooting.
    pub no_reboot: Option<bool>,
    /// Where COM1 goes: "stdio" or "none".
    pub serial: Option<String>,
}

/// Names of the built-in presets.
pub fn names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// Parses a preset's TOML text; `what` names it in errors.
pub fn parse(what: &str, text: &str) -> Result<Preset, String> {
    toml::from_str(text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        format!("{what}: {}", msg.trim())
    })
}

/// Looks up a preset by name, or reads it from a file when the name
/// contains a `/` or ends in `.toml`.
pub fn load(name: &str) -> Result<Preset, String> {
    if name.contains('/') || name.ends_with(".toml") {
        let text = std::fs::read_to_string(name).map_err(|e| format!("--preset {name}: {e}"))?;
        return parse(&format!("--preset {name}"), &text);
    }
    match BUILTIN.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => parse(&format!("preset {n}"), text),
        None => Err(format!(
            "--preset {name}: no such preset (available: {})",
            names().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_presets_parse() {
        for n in names() {
            let p = load(n).expect("builtin preset parses");
            assert!(p.name.is_some(), "{n} has a name");
        }
        let p = load("linux-direct").expect("linux-direct");
        assert_eq!(p.memory.as_deref(), Some("512M"));
        assert!(p
            .append
            .as_deref()
            .is_some_and(|a| a.contains("console=ttyS0")));
    }

    #[test]
    fn errors_are_one_line_and_name_the_preset() {
        let e = load("nope").unwrap_err();
        assert!(e.contains("nope") && e.contains("linux-direct"), "{e}");
        let e = parse("x.toml", "memory = 5\nbogus = 1").unwrap_err();
        assert!(e.starts_with("x.toml: ") && !e.contains('\n'), "{e}");
        let e = parse("y.toml", "smp = \"two\"").unwrap_err();
        assert!(e.starts_with("y.toml: "), "{e}");
    }
}
