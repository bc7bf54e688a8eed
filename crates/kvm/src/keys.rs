//! Key combinations and text as QEMU key codes (`qcode`s), for QMP `send-key`.
//!
//! A combination is key names joined by `-` (`ctrl-alt-delete`, `shift-f10`, `a`): QEMU's own
//! qcode names (`ctrl`, `alt_r`, `kp_enter`, `ret`, ...) plus friendly aliases (`del`,
//! `enter`, `escape`, `space`, `pgup`, ...). A single printable character stands for the key
//! that types it on a US keyboard (`A` is `shift-a`). Text is typed one character at a time on
//! a US layout: printable ASCII, `\n` (Return) and `\t` (Tab). Everything else is refused with
//! an error naming it; nothing is sent for a request with any bad part.

use serde_json::{json, Value};

/// At most this many characters of text per request.
pub const MAX_TEXT: usize = 4096;
/// At most this many combinations per request.
pub const MAX_COMBOS: usize = 64;
/// At most this many keys pressed together.
pub const MAX_KEYS_PER_COMBO: usize = 8;
/// A key name longer than this is not one (and is not echoed back whole).
const MAX_NAME: usize = 32;

/// One combination: the keys pressed in order, released in reverse (QEMU's qcodes).
pub type Combo = Vec<&'static str>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("give exactly one of keys (key combinations such as ctrl-alt-delete) or text")]
    OneOfKeysOrText,
    #[error("no keys given; name at least one key combination such as ctrl-alt-delete or esc")]
    NoKeys,
    #[error("{count} key combinations is too many; send at most {MAX_COMBOS} per request")]
    TooManyCombos { count: usize },
    #[error("key combination {combo:?} is empty or has an empty part; join key names with -, as in ctrl-alt-delete")]
    EmptyPart { combo: String },
    #[error("key combination {combo:?} presses more than {MAX_KEYS_PER_COMBO} keys at once")]
    TooManyKeys { combo: String },
    #[error("key combination {combo:?} names {key} twice")]
    Repeated { combo: String, key: &'static str },
    #[error("unknown key {name:?}; use names such as ctrl, alt, shift, del, esc, enter, space, tab, backspace, f1-f12, up, down, left, right, pgup, pgdn, home, end, insert, sysrq, a-z, 0-9, or QEMU qcodes")]
    UnknownKey { name: String },
    #[error("the text is empty; give at least one character")]
    EmptyText,
    #[error("the text has {count} characters; type at most {MAX_TEXT} per request")]
    TextTooLong { count: usize },
    #[error("character {ch:?} at position {pos} of the text cannot be typed on a US keyboard; use printable ASCII, newline and tab")]
    Untypable { ch: char, pos: usize },
}

/// QEMU's qcodes that callers may name directly (QAPI `QKeyCode`, the keys of a PC keyboard).
const QCODES: &[&str] = &[
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
    "meta_l",
    "meta_r",
    "compose",
    "pause",
    "power",
    "sleep",
    "wake",
];

/// Friendly names and the qcode each stands for.
const ALIASES: &[(&str, &str)] = &[
    ("control", "ctrl"),
    ("del", "delete"),
    ("enter", "ret"),
    ("return", "ret"),
    ("escape", "esc"),
    ("space", "spc"),
    ("bksp", "backspace"),
    ("pageup", "pgup"),
    ("pagedown", "pgdn"),
    ("pgdown", "pgdn"),
    ("ins", "insert"),
    ("prtsc", "print"),
    ("win", "meta_l"),
    ("super", "meta_l"),
    ("meta", "meta_l"),
    ("capslock", "caps_lock"),
];

/// The key (and whether Shift is needed) that types `c` on a US keyboard.
fn us_key(c: char) -> Option<(&'static str, bool)> {
    const PLAIN: &[(char, &str)] = &[
        ('-', "minus"),
        ('=', "equal"),
        ('[', "bracket_left"),
        (']', "bracket_right"),
        ('\\', "backslash"),
        (';', "semicolon"),
        ('\'', "apostrophe"),
        ('`', "grave_accent"),
        (',', "comma"),
        ('.', "dot"),
        ('/', "slash"),
        (' ', "spc"),
        ('\n', "ret"),
        ('\t', "tab"),
    ];
    const SHIFTED: &[(char, &str)] = &[
        ('!', "1"),
        ('@', "2"),
        ('#', "3"),
        ('$', "4"),
        ('%', "5"),
        ('^', "6"),
        ('&', "7"),
        ('*', "8"),
        ('(', "9"),
        (')', "0"),
        ('_', "minus"),
        ('+', "equal"),
        ('{', "bracket_left"),
        ('}', "bracket_right"),
        ('|', "backslash"),
        (':', "semicolon"),
        ('"', "apostrophe"),
        ('~', "grave_accent"),
        ('<', "comma"),
        ('>', "dot"),
        ('?', "slash"),
    ];
    let qcode = |s: &str| QCODES.iter().copied().find(|q| *q == s);
    if c.is_ascii_lowercase() || c.is_ascii_digit() {
        return qcode(c.encode_utf8(&mut [0; 4])).map(|q| (q, false));
    }
    if c.is_ascii_uppercase() {
        return qcode(c.to_ascii_lowercase().encode_utf8(&mut [0; 4])).map(|q| (q, true));
    }
    PLAIN
        .iter()
        .find(|(ch, _)| *ch == c)
        .map(|(_, q)| (*q, false))
        .or_else(|| {
            SHIFTED
                .iter()
                .find(|(ch, _)| *ch == c)
                .map(|(_, q)| (*q, true))
        })
}

/// One key name of a combination, as one or two qcodes (a shifted character).
fn key(name: &str) -> Result<Vec<&'static str>, KeyError> {
    let unknown = || KeyError::UnknownKey {
        name: name.chars().take(MAX_NAME).collect(),
    };
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        // A single character: the key that types it (except a control character).
        if c.is_ascii_graphic() {
            let (q, shift) = us_key(c).ok_or_else(unknown)?;
            return Ok(if shift { vec!["shift", q] } else { vec![q] });
        }
        return Err(unknown());
    }
    let lower = name.to_ascii_lowercase();
    if let Some(q) = QCODES.iter().copied().find(|q| *q == lower) {
        return Ok(vec![q]);
    }
    ALIASES
        .iter()
        .find(|(a, _)| *a == lower)
        .map(|(_, q)| vec![*q])
        .ok_or_else(unknown)
}

/// Parses one combination (`ctrl-alt-delete`).
pub fn combo(text: &str) -> Result<Combo, KeyError> {
    let shown = || text.chars().take(MAX_NAME * 2).collect::<String>();
    if text.len() > MAX_NAME * MAX_KEYS_PER_COMBO {
        return Err(KeyError::TooManyKeys { combo: shown() });
    }
    let mut out: Combo = Vec::new();
    for part in text.split('-') {
        if part.is_empty() {
            return Err(KeyError::EmptyPart { combo: shown() });
        }
        for q in key(part)? {
            if out.contains(&q) {
                return Err(KeyError::Repeated {
                    combo: shown(),
                    key: q,
                });
            }
            out.push(q);
        }
    }
    if out.len() > MAX_KEYS_PER_COMBO {
        return Err(KeyError::TooManyKeys { combo: shown() });
    }
    Ok(out)
}

/// Parses a list of combinations; all or nothing.
pub fn combos(list: &[String]) -> Result<Vec<Combo>, KeyError> {
    if list.is_empty() {
        return Err(KeyError::NoKeys);
    }
    if list.len() > MAX_COMBOS {
        return Err(KeyError::TooManyCombos { count: list.len() });
    }
    list.iter().map(|c| combo(c)).collect()
}

/// Text as the keystrokes that type it on a US keyboard, one combination per character.
pub fn text(text: &str) -> Result<Vec<Combo>, KeyError> {
    let count = text.chars().count();
    if count == 0 {
        return Err(KeyError::EmptyText);
    }
    if count > MAX_TEXT {
        return Err(KeyError::TextTooLong { count });
    }
    text.chars()
        .enumerate()
        .map(|(pos, ch)| match us_key(ch) {
            Some((q, true)) => Ok(vec!["shift", q]),
            Some((q, false)) => Ok(vec![q]),
            None => Err(KeyError::Untypable { ch, pos }),
        })
        .collect()
}

/// The combinations of a request that has exactly one of `keys` and `text`.
pub fn plan(keys: Option<&[String]>, txt: Option<&str>) -> Result<Vec<Combo>, KeyError> {
    match (keys, txt) {
        (Some(k), None) => combos(k),
        (None, Some(t)) => text(t),
        _ => Err(KeyError::OneOfKeysOrText),
    }
}

/// The arguments of QMP `send-key` for one combination, each key held `hold_ms`.
pub fn send_key_args(combo: &[&str], hold_ms: u32) -> Value {
    let keys: Vec<Value> = combo
        .iter()
        .map(|q| json!({ "type": "qcode", "data": q }))
        .collect();
    json!({ "keys": keys, "hold-time": hold_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, want: Result<&[&str], &str>) {
        match (combo(input), want) {
            (Ok(got), Ok(w)) => assert_eq!(got, w, "{input}"),
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{input}: {e}"),
            (got, w) => panic!("{input}: got {got:?}, want {w:?}"),
        }
    }

    #[test]
    fn combinations_and_aliases() {
        check("ctrl-alt-delete", Ok(&["ctrl", "alt", "delete"]));
        check("Ctrl-Alt-Del", Ok(&["ctrl", "alt", "delete"]));
        check("ctrl-alt-f2", Ok(&["ctrl", "alt", "f2"]));
        check("esc", Ok(&["esc"]));
        check("escape", Ok(&["esc"]));
        check("f12", Ok(&["f12"]));
        check("sysrq", Ok(&["sysrq"]));
        check("alt-sysrq-h", Ok(&["alt", "sysrq", "h"]));
        check("ret", Ok(&["ret"]));
        check("enter", Ok(&["ret"]));
        check("return", Ok(&["ret"]));
        check("space", Ok(&["spc"]));
        check("a", Ok(&["a"]));
        check("A", Ok(&["shift", "a"]));
        check("ctrl-c", Ok(&["ctrl", "c"]));
        check("pgdn", Ok(&["pgdn"]));
        check("kp_enter", Ok(&["kp_enter"]));
        check("/", Ok(&["slash"]));
        check("?", Ok(&["shift", "slash"]));
        check("shift-?", Err("names shift twice"));
        check("", Err("empty"));
        check("ctrl-", Err("empty"));
        check("ctrl--", Err("empty"));
        check("hyper", Err("unknown key \"hyper\""));
        check("ctrl-é", Err("unknown key \"é\""));
        check("\u{7f}", Err("unknown key"));
        check("ctrl-alt-shift-meta_l-a-b-c-d-e", Err("more than 8 keys"));
        // A hostile name is cut in the message.
        let long = "x".repeat(100);
        let e = combo(&long).unwrap_err().to_string();
        assert!(e.len() < 400 && !e.contains(&long), "{e}");
        let huge = "a-".repeat(10_000);
        assert!(matches!(combo(&huge), Err(KeyError::TooManyKeys { .. })));
    }

    #[test]
    fn lists_are_bounded_and_all_or_nothing() {
        assert_eq!(combos(&[]), Err(KeyError::NoKeys));
        let many = vec!["a".to_string(); MAX_COMBOS + 1];
        assert!(matches!(
            combos(&many),
            Err(KeyError::TooManyCombos { count: 65 })
        ));
        let mixed = vec!["esc".to_string(), "bogus".to_string()];
        assert!(matches!(combos(&mixed), Err(KeyError::UnknownKey { .. })));
        assert_eq!(
            combos(&["esc".into(), "f12".into()]).unwrap(),
            vec![vec!["esc"], vec!["f12"]]
        );
    }

    #[test]
    fn text_types_on_a_us_keyboard() {
        assert_eq!(
            text("Hi!\n").unwrap(),
            vec![
                vec!["shift", "h"],
                vec!["i"],
                vec!["shift", "1"],
                vec!["ret"]
            ]
        );
        assert_eq!(
            text("a b\t~_").unwrap(),
            vec![
                vec!["a"],
                vec!["spc"],
                vec!["b"],
                vec!["tab"],
                vec!["shift", "grave_accent"],
                vec!["shift", "minus"]
            ]
        );
        // Every printable ASCII character can be typed.
        let all: String = (0x20u8..0x7f).map(char::from).collect();
        assert_eq!(text(&all).unwrap().len(), 95);
        assert_eq!(text(""), Err(KeyError::EmptyText));
        assert_eq!(text("añb"), Err(KeyError::Untypable { ch: 'ñ', pos: 1 }));
        assert_eq!(text("a\rb"), Err(KeyError::Untypable { ch: '\r', pos: 1 }));
        assert_eq!(
            text("\u{1b}"),
            Err(KeyError::Untypable {
                ch: '\u{1b}',
                pos: 0
            })
        );
        assert!(text(&"a".repeat(MAX_TEXT)).is_ok());
        assert_eq!(
            text(&"a".repeat(MAX_TEXT + 1)),
            Err(KeyError::TextTooLong { count: 4097 })
        );
        // Characters, not bytes, are counted.
        assert!(matches!(
            text(&"é".repeat(3000)),
            Err(KeyError::Untypable { .. })
        ));
    }

    #[test]
    fn exactly_one_of_keys_or_text() {
        let k = vec!["esc".to_string()];
        assert_eq!(plan(None, None), Err(KeyError::OneOfKeysOrText));
        assert_eq!(plan(Some(&k), Some("x")), Err(KeyError::OneOfKeysOrText));
        assert_eq!(plan(Some(&k), None).unwrap(), vec![vec!["esc"]]);
        assert_eq!(plan(None, Some("x")).unwrap(), vec![vec!["x"]]);
    }

    #[test]
    fn send_key_arguments() {
        assert_eq!(
            send_key_args(&["ctrl", "alt", "delete"], 100),
            json!({
                "keys": [
                    { "type": "qcode", "data": "ctrl" },
                    { "type": "qcode", "data": "alt" },
                    { "type": "qcode", "data": "delete" }
                ],
                "hold-time": 100
            })
        );
    }
}
