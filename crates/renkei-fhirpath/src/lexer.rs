//! Tokeniser for FHIRPath expressions.

use crate::error::FhirPathError;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// An identifier. `delimited` is true for `` `backtick` `` identifiers,
    /// which are never treated as keywords/operators.
    Ident {
        name: String,
        delimited: bool,
    },
    Str(String),
    /// Number literal, kept as text so decimals keep their precision.
    Num(String),
    /// `@2020-01-01`, `@T10:00` … (text after the `@`).
    DateTime(String),
    /// `%name`
    Var(String),
    /// `$this`, `$index`, `$total`
    Special(String),
    Sym(&'static str),
    Eof,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub offset: usize,
}

fn syntax(offset: usize, message: impl Into<String>) -> FhirPathError {
    FhirPathError::Syntax {
        offset,
        message: message.into(),
    }
}

/// Symbols, longest first so `<=` wins over `<`.
const SYMBOLS: &[&str] = &[
    "!=", "!~", "<=", ">=", ".", ",", "(", ")", "[", "]", "{", "}", "|", "=", "~", "<", ">", "+",
    "-", "*", "/", "&",
];

pub fn tokenize(src: &str) -> Result<Vec<Token>, FhirPathError> {
    let mut out = Vec::new();
    let mut chars = src.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        // Comments: `//` to end of line and `/* ... */`.
        if src[start..].starts_with("//") {
            for (_, c) in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            continue;
        }
        if src[start..].starts_with("/*") {
            match src[start + 2..].find("*/") {
                Some(end) => {
                    let stop = start + 2 + end + 2;
                    while chars.peek().is_some_and(|&(i, _)| i < stop) {
                        chars.next();
                    }
                    continue;
                }
                None => return Err(syntax(start, "unterminated comment")),
            }
        }
        let tok = if c.is_ascii_alphabetic() || c == '_' {
            let mut name = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            Tok::Ident {
                name,
                delimited: false,
            }
        } else if c == '`' {
            chars.next();
            Tok::Ident {
                name: read_quoted(&mut chars, '`', start)?,
                delimited: true,
            }
        } else if c == '\'' {
            chars.next();
            Tok::Str(read_quoted(&mut chars, '\'', start)?)
        } else if c.is_ascii_digit() {
            let mut text = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c.is_ascii_digit() {
                    text.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            // A '.' only belongs to the number when a digit follows; otherwise
            // it is an invocation such as `1.toString()`.
            let rest = &src[start + text.len()..];
            let mut rest_chars = rest.chars();
            if rest_chars.next() == Some('.')
                && rest_chars.next().is_some_and(|d| d.is_ascii_digit())
            {
                text.push('.');
                chars.next();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_ascii_digit() {
                        text.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
            }
            Tok::Num(text)
        } else if c == '@' {
            chars.next();
            let mut text = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '+') {
                    text.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if text.is_empty() {
                return Err(syntax(start, "empty date/time literal"));
            }
            Tok::DateTime(text)
        } else if c == '%' {
            chars.next();
            let name = match chars.peek() {
                Some(&(_, '`')) => {
                    chars.next();
                    read_quoted(&mut chars, '`', start)?
                }
                Some(&(_, '\'')) => {
                    chars.next();
                    read_quoted(&mut chars, '\'', start)?
                }
                _ => {
                    let mut name = String::new();
                    while let Some(&(_, c)) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                            name.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    name
                }
            };
            if name.is_empty() {
                return Err(syntax(start, "empty variable name after '%'"));
            }
            Tok::Var(name)
        } else if c == '$' {
            chars.next();
            let mut name = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c.is_ascii_alphanumeric() {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            Tok::Special(name)
        } else if let Some(sym) = SYMBOLS.iter().find(|s| src[start..].starts_with(**s)) {
            for _ in 0..sym.len() {
                chars.next();
            }
            Tok::Sym(sym)
        } else {
            return Err(syntax(start, format!("unexpected character '{c}'")));
        };
        out.push(Token { tok, offset: start });
    }
    out.push(Token {
        tok: Tok::Eof,
        offset: src.len(),
    });
    Ok(out)
}

/// Reads a quoted string/identifier body (opening quote already consumed),
/// handling the FHIRPath escapes `\' \" \` \\ \/ \f \n \r \t \uXXXX`.
fn read_quoted(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    quote: char,
    start: usize,
) -> Result<String, FhirPathError> {
    let mut out = String::new();
    loop {
        let Some((pos, c)) = chars.next() else {
            return Err(syntax(start, format!("unterminated {quote}-quoted text")));
        };
        if c == quote {
            return Ok(out);
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((_, esc)) = chars.next() else {
            return Err(syntax(pos, "unterminated escape sequence"));
        };
        match esc {
            '\'' | '"' | '`' | '\\' | '/' => out.push(esc),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let mut hex = String::new();
                for _ in 0..4 {
                    match chars.next() {
                        Some((_, h)) if h.is_ascii_hexdigit() => hex.push(h),
                        _ => return Err(syntax(pos, "invalid \\u escape")),
                    }
                }
                let code =
                    u32::from_str_radix(&hex, 16).map_err(|_| syntax(pos, "invalid \\u escape"))?;
                // Lone surrogates cannot be represented in a Rust string.
                out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
            }
            other => return Err(syntax(pos, format!("unknown escape '\\{other}'"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_basic_expression() {
        let toks = tokenize("Patient.name.where(use='official') | 1.5 != x").unwrap_or_default();
        let kinds: Vec<Tok> = toks.into_iter().map(|t| t.tok).collect();
        assert_eq!(kinds.len(), 15);
        assert!(kinds.contains(&Tok::Str("official".into())));
        assert!(kinds.contains(&Tok::Num("1.5".into())));
        assert!(kinds.contains(&Tok::Sym("!=")));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for src in ["'abc", "`x", "#", "@", "%", "'\\u12'", "/* x", "é'\\"] {
            assert!(tokenize(src).is_err(), "{src}");
        }
    }
}
