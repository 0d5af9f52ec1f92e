//! QEMU key names ([`QKeyCode`](QKEYCODE_NAMES)) and their PS/2 keyboard
//! scan codes, for QMP's `send-key`.
//!
//! Names: the `QKeyCode` enumeration of QEMU's QAPI schema (`qapi/ui.json`),
//! listed in [`QKEYCODE_NAMES`]. `sysrq` is a synonym of `print` there and
//! here.
//!
//! Codes: the IBM PS/2 Hardware Interface Technical Reference ("Keyboard",
//! scan code sets 1 and 2) and Microsoft's "Keyboard Scan Code
//! Specification" (extended `0xe0` keys, ACPI and multimedia keys, F13-F24).
//! Break codes are derived from make codes: in set 1 a key's release is its
//! make code with bit 7 set (`0xe0` prefixes kept), in set 2 the last byte is
//! preceded by `0xf0`. Two keys are special: Print Screen sends a fake
//! left-shift along with its code and releases both in reverse order, and
//! Pause sends one fixed sequence on press and nothing on release.
//!
//! The machine's i8042 does no translation of its own: pass the set
//! `I8042::expected_scancode_set()` returns (1 when the controller
//! translates set 2, which is the case after any BIOS).
//!
//! "Numbers" (QMP's `{"type": "number"}` key values) are QEMU's key numbers:
//! the set 1 make code, with bit 7 standing for the `0xe0` prefix
//! ([`qnum_to_qcode`], [`qcode_to_qnum`]).

use thiserror::Error;

/// Every name of QEMU's `QKeyCode` enumeration (QAPI `qapi/ui.json`), in the
/// schema's order. Not all of them have a PS/2 scan code ([`make_code`]
/// reports [`KeyError::NoScancode`] for those).
pub const QKEYCODE_NAMES: &[&str] = &[
    "unmapped",
    "shift",
    "shift_r",
    "alt",
    "alt_r",
    "ctrl",
    "ctrl_r",
    "menu",
    "esc",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "0",
    "minus",
    "equal",
    "backspace",
    "tab",
    "q",
    "w",
    "e",
    "r",
    "t",
    "y",
    "u",
    "i",
    "o",
    "p",
    "bracket_left",
    "bracket_right",
    "ret",
    "a",
    "s",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "semicolon",
    "apostrophe",
    "grave_accent",
    "backslash",
    "z",
    "x",
    "c",
    "v",
    "b",
    "n",
    "m",
    "comma",
    "dot",
    "slash",
    "asterisk",
    "spc",
    "caps_lock",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "f6",
    "f7",
    "f8",
    "f9",
    "f10",
    "num_lock",
    "scroll_lock",
    "kp_divide",
    "kp_multiply",
    "kp_subtract",
    "kp_add",
    "kp_enter",
    "kp_decimal",
    "sysrq",
    "kp_0",
    "kp_1",
    "kp_2",
    "kp_3",
    "kp_4",
    "kp_5",
    "kp_6",
    "kp_7",
    "kp_8",
    "kp_9",
    "less",
    "f11",
    "f12",
    "print",
    "home",
    "pgup",
    "pgdn",
    "end",
    "left",
    "up",
    "down",
    "right",
    "insert",
    "delete",
    "stop",
    "again",
    "props",
    "undo",
    "front",
    "copy",
    "open",
    "paste",
    "find",
    "cut",
    "lf",
    "help",
    "meta_l",
    "meta_r",
    "compose",
    "pause",
    "ro",
    "hiragana",
    "henkan",
    "yen",
    "muhenkan",
    "katakanahiragana",
    "kp_comma",
    "kp_equals",
    "power",
    "sleep",
    "wake",
    "audionext",
    "audioprev",
    "audiostop",
    "audioplay",
    "audiomute",
    "volumeup",
    "volumedown",
    "mediaselect",
    "mail",
    "calculator",
    "computer",
    "ac_home",
    "ac_back",
    "ac_forward",
    "ac_refresh",
    "ac_bookmarks",
    "lang1",
    "lang2",
    "f13",
    "f14",
    "f15",
    "f16",
    "f17",
    "f18",
    "f19",
    "f20",
    "f21",
    "f22",
    "f23",
    "f24",
];

/// A key with a PS/2 code: its QKeyCode name, its set 1 code (one byte, with
/// bit 8 meaning an `0xe0` prefix) and its set 2 code (likewise).
struct Key {
    name: &'static str,
    set1: u16,
    set2: u16,
}

const E0: u16 = 0x100;

const fn k(name: &'static str, set1: u16, set2: u16) -> Key {
    Key { name, set1, set2 }
}

/// The keys with an ordinary make/break code (Print Screen and Pause are
/// handled apart). Sources: the module docs.
const KEYS: &[Key] = &[
    // Main block, typewriter keys.
    k("esc", 0x01, 0x76),
    k("1", 0x02, 0x16),
    k("2", 0x03, 0x1e),
    k("3", 0x04, 0x26),
    k("4", 0x05, 0x25),
    k("5", 0x06, 0x2e),
    k("6", 0x07, 0x36),
    k("7", 0x08, 0x3d),
    k("8", 0x09, 0x3e),
    k("9", 0x0a, 0x46),
    k("0", 0x0b, 0x45),
    k("minus", 0x0c, 0x4e),
    k("equal", 0x0d, 0x55),
    k("backspace", 0x0e, 0x66),
    k("tab", 0x0f, 0x0d),
    k("q", 0x10, 0x15),
    k("w", 0x11, 0x1d),
    k("e", 0x12, 0x24),
    k("r", 0x13, 0x2d),
    k("t", 0x14, 0x2c),
    k("y", 0x15, 0x35),
    k("u", 0x16, 0x3c),
    k("i", 0x17, 0x43),
    k("o", 0x18, 0x44),
    k("p", 0x19, 0x4d),
    k("bracket_left", 0x1a, 0x54),
    k("bracket_right", 0x1b, 0x5b),
    k("ret", 0x1c, 0x5a),
    k("ctrl", 0x1d, 0x14),
    k("a", 0x1e, 0x1c),
    k("s", 0x1f, 0x1b),
    k("d", 0x20, 0x23),
    k("f", 0x21, 0x2b),
    k("g", 0x22, 0x34),
    k("h", 0x23, 0x33),
    k("j", 0x24, 0x3b),
    k("k", 0x25, 0x42),
    k("l", 0x26, 0x4b),
    k("semicolon", 0x27, 0x4c),
    k("apostrophe", 0x28, 0x52),
    k("grave_accent", 0x29, 0x0e),
    k("shift", 0x2a, 0x12),
    k("backslash", 0x2b, 0x5d),
    k("z", 0x2c, 0x1a),
    k("x", 0x2d, 0x22),
    k("c", 0x2e, 0x21),
    k("v", 0x2f, 0x2a),
    k("b", 0x30, 0x32),
    k("n", 0x31, 0x31),
    k("m", 0x32, 0x3a),
    k("comma", 0x33, 0x41),
    k("dot", 0x34, 0x49),
    k("slash", 0x35, 0x4a),
    k("shift_r", 0x36, 0x59),
    k("kp_multiply", 0x37, 0x7c),
    k("alt", 0x38, 0x11),
    k("spc", 0x39, 0x29),
    k("caps_lock", 0x3a, 0x58),
    // Function keys.
    k("f1", 0x3b, 0x05),
    k("f2", 0x3c, 0x06),
    k("f3", 0x3d, 0x04),
    k("f4", 0x3e, 0x0c),
    k("f5", 0x3f, 0x03),
    k("f6", 0x40, 0x0b),
    k("f7", 0x41, 0x83),
    k("f8", 0x42, 0x0a),
    k("f9", 0x43, 0x01),
    k("f10", 0x44, 0x09),
    k("f11", 0x57, 0x78),
    k("f12", 0x58, 0x07),
    // Locks and keypad.
    k("num_lock", 0x45, 0x77),
    k("scroll_lock", 0x46, 0x7e),
    k("kp_7", 0x47, 0x6c),
    k("kp_8", 0x48, 0x75),
    k("kp_9", 0x49, 0x7d),
    k("kp_subtract", 0x4a, 0x7b),
    k("kp_4", 0x4b, 0x6b),
    k("kp_5", 0x4c, 0x73),
    k("kp_6", 0x4d, 0x74),
    k("kp_add", 0x4e, 0x79),
    k("kp_1", 0x4f, 0x69),
    k("kp_2", 0x50, 0x72),
    k("kp_3", 0x51, 0x7a),
    k("kp_0", 0x52, 0x70),
    k("kp_decimal", 0x53, 0x71),
    k("kp_enter", E0 | 0x1c, E0 | 0x5a),
    k("kp_divide", E0 | 0x35, E0 | 0x4a),
    k("kp_equals", 0x59, 0x0f),
    k("kp_comma", 0x7e, 0x6d),
    // The ISO key between left shift and Z.
    k("less", 0x56, 0x61),
    // Right-hand modifiers, Windows and application keys.
    k("ctrl_r", E0 | 0x1d, E0 | 0x14),
    k("alt_r", E0 | 0x38, E0 | 0x11),
    k("meta_l", E0 | 0x5b, E0 | 0x1f),
    k("meta_r", E0 | 0x5c, E0 | 0x27),
    k("menu", E0 | 0x5d, E0 | 0x2f),
    k("compose", E0 | 0x5d, E0 | 0x2f),
    // Navigation block.
    k("insert", E0 | 0x52, E0 | 0x70),
    k("delete", E0 | 0x53, E0 | 0x71),
    k("home", E0 | 0x47, E0 | 0x6c),
    k("end", E0 | 0x4f, E0 | 0x69),
    k("pgup", E0 | 0x49, E0 | 0x7d),
    k("pgdn", E0 | 0x51, E0 | 0x7a),
    k("up", E0 | 0x48, E0 | 0x75),
    k("down", E0 | 0x50, E0 | 0x72),
    k("left", E0 | 0x4b, E0 | 0x6b),
    k("right", E0 | 0x4d, E0 | 0x74),
    // F13-F24.
    k("f13", 0x64, 0x08),
    k("f14", 0x65, 0x10),
    k("f15", 0x66, 0x18),
    k("f16", 0x67, 0x20),
    k("f17", 0x68, 0x28),
    k("f18", 0x69, 0x30),
    k("f19", 0x6a, 0x38),
    k("f20", 0x6b, 0x40),
    k("f21", 0x6c, 0x48),
    k("f22", 0x6d, 0x50),
    k("f23", 0x6e, 0x57),
    k("f24", 0x76, 0x5f),
    // Japanese keyboards.
    k("ro", 0x73, 0x51),
    k("katakanahiragana", 0x70, 0x13),
    k("henkan", 0x79, 0x64),
    k("muhenkan", 0x7b, 0x67),
    k("yen", 0x7d, 0x6a),
    // ACPI keys.
    k("power", E0 | 0x5e, E0 | 0x37),
    k("sleep", E0 | 0x5f, E0 | 0x3f),
    k("wake", E0 | 0x63, E0 | 0x5e),
    // Multimedia keys.
    k("audionext", E0 | 0x19, E0 | 0x4d),
    k("audioprev", E0 | 0x10, E0 | 0x15),
    k("audiostop", E0 | 0x24, E0 | 0x3b),
    k("audioplay", E0 | 0x22, E0 | 0x34),
    k("audiomute", E0 | 0x20, E0 | 0x23),
    k("volumeup", E0 | 0x30, E0 | 0x32),
    k("volumedown", E0 | 0x2e, E0 | 0x21),
    k("mediaselect", E0 | 0x6d, E0 | 0x50),
    k("mail", E0 | 0x6c, E0 | 0x48),
    k("calculator", E0 | 0x21, E0 | 0x2b),
    k("computer", E0 | 0x6b, E0 | 0x40),
    k("ac_home", E0 | 0x32, E0 | 0x3a),
    k("ac_back", E0 | 0x6a, E0 | 0x38),
    k("ac_forward", E0 | 0x69, E0 | 0x30),
    k("ac_refresh", E0 | 0x67, E0 | 0x20),
    k("ac_bookmarks", E0 | 0x66, E0 | 0x18),
    k("stop", E0 | 0x68, E0 | 0x28),
];

/// Print Screen, set 1: fake left shift then `e0 37`; released in reverse.
const PRINT_SET1_MAKE: &[u8] = &[0xe0, 0x2a, 0xe0, 0x37];
const PRINT_SET1_BREAK: &[u8] = &[0xe0, 0xb7, 0xe0, 0xaa];
/// Print Screen, set 2.
const PRINT_SET2_MAKE: &[u8] = &[0xe0, 0x12, 0xe0, 0x7c];
const PRINT_SET2_BREAK: &[u8] = &[0xe0, 0xf0, 0x7c, 0xe0, 0xf0, 0x12];
/// Pause: one sequence on press, nothing on release.
const PAUSE_SET1: &[u8] = &[0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5];
const PAUSE_SET2: &[u8] = &[0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77];

/// Why a key has no scan code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The name is not a QKeyCode.
    #[error("'{0}' is not a QKeyCode name")]
    UnknownKey(String),
    /// A QKeyCode with no PS/2 scan code (Sun and language keys).
    #[error("key '{0}' has no PS/2 scan code")]
    NoScancode(String),
    /// A QEMU key number that names no key.
    #[error("key number {0} names no key")]
    UnknownNumber(i64),
    /// Only scan code sets 1 and 2 are produced.
    #[error("scan code set {0} is not supported (only sets 1 and 2)")]
    UnsupportedSet(u8),
}

/// Whether `name` is a QKeyCode name (including those without a scan code).
pub fn is_qkeycode(name: &str) -> bool {
    QKEYCODE_NAMES.contains(&name)
}

/// The name QEMU uses for `name`: `sysrq` is `print`, `asterisk` (the
/// keypad's `*`) is `kp_multiply`; every other name is itself.
pub fn canonical(name: &str) -> &str {
    match name {
        "sysrq" => "print",
        "asterisk" => "kp_multiply",
        other => other,
    }
}

fn lookup(name: &str) -> Result<Option<&'static Key>, KeyError> {
    let name = canonical(name);
    if !is_qkeycode(name) {
        return Err(KeyError::UnknownKey(name.to_string()));
    }
    Ok(KEYS.iter().find(|key| key.name == name))
}

fn code_bytes(code: u16, out: &mut Vec<u8>) {
    if code & E0 != 0 {
        out.push(0xe0);
    }
    out.push((code & 0xff) as u8);
}

/// The bytes a PS/2 keyboard sends when `name` is pressed, in scan code set
/// `set` (1 or 2).
pub fn make_code(name: &str, set: u8) -> Result<Vec<u8>, KeyError> {
    codes(name, set, true)
}

/// The bytes a PS/2 keyboard sends when `name` is released (empty for
/// Pause, which has no break code).
pub fn break_code(name: &str, set: u8) -> Result<Vec<u8>, KeyError> {
    codes(name, set, false)
}

fn codes(name: &str, set: u8, make: bool) -> Result<Vec<u8>, KeyError> {
    if set != 1 && set != 2 {
        return Err(KeyError::UnsupportedSet(set));
    }
    let special = match (canonical(name), set, make) {
        ("print", 1, true) => Some(PRINT_SET1_MAKE),
        ("print", 1, false) => Some(PRINT_SET1_BREAK),
        ("print", _, true) => Some(PRINT_SET2_MAKE),
        ("print", _, false) => Some(PRINT_SET2_BREAK),
        ("pause", 1, true) => Some(PAUSE_SET1),
        ("pause", _, true) => Some(PAUSE_SET2),
        ("pause", _, false) => Some(&[][..]),
        _ => None,
    };
    if let Some(bytes) = special {
        return Ok(bytes.to_vec());
    }
    let key = lookup(name)?.ok_or_else(|| KeyError::NoScancode(canonical(name).to_string()))?;
    let mut out = Vec::with_capacity(3);
    if set == 1 {
        let code = if make { key.set1 } else { key.set1 | 0x80 };
        code_bytes(code, &mut out);
    } else {
        if key.set2 & E0 != 0 {
            out.push(0xe0);
        }
        if !make {
            out.push(0xf0);
        }
        out.push((key.set2 & 0xff) as u8);
    }
    Ok(out)
}

/// The bytes for pressing `keys` together and letting them go: every key
/// pressed in order, then released in reverse order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySequence {
    /// The make codes, first key first.
    pub press: Vec<u8>,
    /// The break codes, last key first.
    pub release: Vec<u8>,
}

/// Scan codes (set 1 or 2) for pressing `keys` (QKeyCode names) together,
/// like QMP's `send-key`: press in order, release in reverse order.
pub fn key_sequence(keys: &[&str], set: u8) -> Result<KeySequence, KeyError> {
    let mut seq = KeySequence::default();
    for key in keys {
        seq.press.extend(make_code(key, set)?);
    }
    for key in keys.iter().rev() {
        seq.release.extend(break_code(key, set)?);
    }
    Ok(seq)
}

/// The QKeyCode named by a QEMU key number (set 1 make code, bit 7 for the
/// `0xe0` prefix): 0x1d is `ctrl`, 0x9d is `ctrl_r`. Print Screen is 0xb7
/// and Pause 0xc6, as QEMU numbers them.
pub fn qnum_to_qcode(number: i64) -> Option<&'static str> {
    match number {
        0xb7 => return Some("print"),
        0xc6 => return Some("pause"),
        _ => {}
    }
    let code = u16::try_from(number)
        .ok()
        .filter(|n| *n > 0 && *n < 0x100)?;
    let set1 = if code & 0x80 != 0 {
        E0 | (code & 0x7f)
    } else {
        code
    };
    // `menu` and `compose` share their code: prefer `menu`, listed first.
    KEYS.iter().find(|key| key.set1 == set1).map(|key| key.name)
}

/// The QEMU key number of a QKeyCode (the inverse of [`qnum_to_qcode`]).
pub fn qcode_to_qnum(name: &str) -> Option<u32> {
    match canonical(name) {
        "print" => return Some(0xb7),
        "pause" => return Some(0xc6),
        _ => {}
    }
    let key = lookup(name).ok().flatten()?;
    let low = u32::from(key.set1 & 0x7f);
    Some(if key.set1 & E0 != 0 { 0x80 | low } else { low })
}

/// The QKeyCode names that type `ch` on a US keyboard (with `shift` first
/// when needed), or None for characters it has no key for.
pub fn keys_for_char(ch: char) -> Option<Vec<&'static str>> {
    const LETTERS: [&str; 26] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r",
        "s", "t", "u", "v", "w", "x", "y", "z",
    ];
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    let plain = |k: &'static str| Some(vec![k]);
    let shifted = |k: &'static str| Some(vec!["shift", k]);
    match ch {
        'a'..='z' => plain(LETTERS[(ch as u8 - b'a') as usize]),
        'A'..='Z' => shifted(LETTERS[(ch as u8 - b'A') as usize]),
        '0'..='9' => plain(DIGITS[(ch as u8 - b'0') as usize]),
        ' ' => plain("spc"),
        '\n' => plain("ret"),
        '\t' => plain("tab"),
        '-' => plain("minus"),
        '_' => shifted("minus"),
        '=' => plain("equal"),
        '+' => shifted("equal"),
        '[' => plain("bracket_left"),
        '{' => shifted("bracket_left"),
        ']' => plain("bracket_right"),
        '}' => shifted("bracket_right"),
        ';' => plain("semicolon"),
        ':' => shifted("semicolon"),
        '\'' => plain("apostrophe"),
        '"' => shifted("apostrophe"),
        '`' => plain("grave_accent"),
        '~' => shifted("grave_accent"),
        '\\' => plain("backslash"),
        '|' => shifted("backslash"),
        ',' => plain("comma"),
        '<' => shifted("comma"),
        '.' => plain("dot"),
        '>' => shifted("dot"),
        '/' => plain("slash"),
        '?' => shifted("slash"),
        '!' => shifted("1"),
        '@' => shifted("2"),
        '#' => shifted("3"),
        '$' => shifted("4"),
        '%' => shifted("5"),
        '^' => shifted("6"),
        '&' => shifted("7"),
        '*' => shifted("8"),
        '(' => shifted("9"),
        ')' => shifted("0"),
        _ => None,
    }
}

/// Resolves a QMP key value to a QKeyCode name: `qcode` names are checked
/// (and made canonical), numbers go through [`qnum_to_qcode`].
pub fn resolve(qcode: Option<&str>, number: Option<i64>) -> Result<&'static str, KeyError> {
    match (qcode, number) {
        (Some(name), _) => {
            let name = canonical(name);
            QKEYCODE_NAMES
                .iter()
                .copied()
                .find(|n| *n == name)
                .ok_or_else(|| KeyError::UnknownKey(name.to_string()))
        }
        (None, Some(n)) => qnum_to_qcode(n).ok_or(KeyError::UnknownNumber(n)),
        (None, None) => Err(KeyError::UnknownKey(String::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_printable_ascii_character_has_keys() {
        for c in (0x20u8..0x7f).map(char::from) {
            let keys = keys_for_char(c).unwrap_or_else(|| panic!("{c:?}"));
            assert!(key_sequence(&keys, 2).is_ok(), "{c:?}");
        }
        assert_eq!(keys_for_char('A'), Some(vec!["shift", "a"]));
        assert_eq!(keys_for_char('é'), None);
    }
    use std::collections::HashSet;

    #[test]
    fn letters_and_modifiers_in_both_sets() {
        assert_eq!(make_code("a", 1).unwrap(), [0x1e]);
        assert_eq!(break_code("a", 1).unwrap(), [0x9e]);
        assert_eq!(make_code("a", 2).unwrap(), [0x1c]);
        assert_eq!(break_code("a", 2).unwrap(), [0xf0, 0x1c]);
        assert_eq!(make_code("ctrl_r", 1).unwrap(), [0xe0, 0x1d]);
        assert_eq!(break_code("ctrl_r", 1).unwrap(), [0xe0, 0x9d]);
        assert_eq!(make_code("ctrl_r", 2).unwrap(), [0xe0, 0x14]);
        assert_eq!(break_code("ctrl_r", 2).unwrap(), [0xe0, 0xf0, 0x14]);
        assert_eq!(make_code("f7", 2).unwrap(), [0x83]);
        assert_eq!(break_code("f7", 2).unwrap(), [0xf0, 0x83]);
        assert_eq!(make_code("ret", 1).unwrap(), [0x1c]);
        assert_eq!(make_code("kp_enter", 1).unwrap(), [0xe0, 0x1c]);
        assert_eq!(make_code("delete", 2).unwrap(), [0xe0, 0x71]);
    }

    #[test]
    fn print_and_pause_are_special() {
        assert_eq!(make_code("print", 1).unwrap(), [0xe0, 0x2a, 0xe0, 0x37]);
        assert_eq!(break_code("sysrq", 1).unwrap(), [0xe0, 0xb7, 0xe0, 0xaa]);
        assert_eq!(make_code("print", 2).unwrap(), [0xe0, 0x12, 0xe0, 0x7c]);
        assert_eq!(
            break_code("print", 2).unwrap(),
            [0xe0, 0xf0, 0x7c, 0xe0, 0xf0, 0x12]
        );
        assert_eq!(
            make_code("pause", 1).unwrap(),
            [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]
        );
        assert!(break_code("pause", 1).unwrap().is_empty());
        assert_eq!(
            make_code("pause", 2).unwrap(),
            [0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77]
        );
        assert!(break_code("pause", 2).unwrap().is_empty());
    }

    #[test]
    fn ctrl_alt_delete_sequences() {
        let s1 = key_sequence(&["ctrl", "alt", "delete"], 1).unwrap();
        assert_eq!(s1.press, [0x1d, 0x38, 0xe0, 0x53]);
        assert_eq!(s1.release, [0xe0, 0xd3, 0xb8, 0x9d]);
        let s2 = key_sequence(&["ctrl", "alt", "delete"], 2).unwrap();
        assert_eq!(s2.press, [0x14, 0x11, 0xe0, 0x71]);
        assert_eq!(s2.release, [0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]);
        assert_eq!(key_sequence(&[], 1).unwrap(), KeySequence::default());
    }

    #[test]
    fn errors() {
        assert_eq!(
            make_code("nope", 1),
            Err(KeyError::UnknownKey("nope".into()))
        );
        assert_eq!(make_code("lf", 1), Err(KeyError::NoScancode("lf".into())));
        assert_eq!(make_code("a", 3), Err(KeyError::UnsupportedSet(3)));
        assert_eq!(make_code("a", 0), Err(KeyError::UnsupportedSet(0)));
        assert!(key_sequence(&["a", "bogus"], 1).is_err());
        assert_eq!(
            resolve(None, Some(0x1000)),
            Err(KeyError::UnknownNumber(0x1000))
        );
        assert_eq!(resolve(Some("sysrq"), None), Ok("print"));
        assert!(resolve(Some("bogus"), None).is_err());
    }

    #[test]
    fn table_is_consistent() {
        let mut names = HashSet::new();
        let mut set1 = HashSet::new();
        let mut set2 = HashSet::new();
        for key in KEYS {
            assert!(is_qkeycode(key.name), "{} is not a QKeyCode", key.name);
            assert!(names.insert(key.name), "{} listed twice", key.name);
            if key.name == "compose" {
                continue; // shares the application key's code with `menu`
            }
            // Make codes never have bit 7 set in set 1 and never collide.
            assert_eq!(key.set1 & 0x80, 0, "{}", key.name);
            assert!(set1.insert(key.set1), "set 1 code of {} reused", key.name);
            assert!(set2.insert(key.set2), "set 2 code of {} reused", key.name);
            // No key's code is a prefix byte.
            assert!(
                !matches!(key.set2 & 0xff, 0xe0 | 0xe1 | 0xf0),
                "{}",
                key.name
            );
        }
        // Every QKeyCode either has codes or says why not.
        for name in QKEYCODE_NAMES {
            for set in [1, 2] {
                match make_code(name, set) {
                    Ok(bytes) => assert!(!bytes.is_empty()),
                    Err(KeyError::NoScancode(_)) => {}
                    Err(e) => panic!("{name}: {e}"),
                }
            }
        }
        // The keys the QMP users need are all there.
        for name in [
            "shift",
            "shift_r",
            "ctrl",
            "ctrl_r",
            "alt",
            "alt_r",
            "meta_l",
            "meta_r",
            "ret",
            "esc",
            "spc",
            "tab",
            "backspace",
            "up",
            "down",
            "left",
            "right",
            "home",
            "end",
            "pgup",
            "pgdn",
            "insert",
            "delete",
            "kp_0",
            "kp_add",
            "kp_enter",
            "minus",
            "equal",
            "bracket_left",
            "bracket_right",
            "grave_accent",
            "backslash",
            "comma",
            "dot",
            "slash",
            "semicolon",
            "apostrophe",
            "less",
            "caps_lock",
            "num_lock",
            "scroll_lock",
            "print",
            "sysrq",
            "pause",
            "menu",
            "f1",
            "f12",
        ] {
            assert!(
                make_code(name, 1).is_ok() && make_code(name, 2).is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn qemu_numbers_round_trip() {
        assert_eq!(qnum_to_qcode(0x1d), Some("ctrl"));
        assert_eq!(qnum_to_qcode(0x9d), Some("ctrl_r"));
        assert_eq!(qnum_to_qcode(0x1e), Some("a"));
        assert_eq!(qnum_to_qcode(0xdd), Some("menu"));
        assert_eq!(qnum_to_qcode(0), None);
        assert_eq!(qnum_to_qcode(-1), None);
        assert_eq!(qnum_to_qcode(i64::MAX), None);
        for key in KEYS {
            let n = qcode_to_qnum(key.name).unwrap();
            let back = qnum_to_qcode(i64::from(n)).unwrap();
            assert!(back == key.name || (key.name == "compose" && back == "menu"));
        }
        assert_eq!(qcode_to_qnum("print"), Some(0xb7));
        assert_eq!(qnum_to_qcode(0xb7), Some("print"));
        assert_eq!(qcode_to_qnum("lf"), None);
    }
}
