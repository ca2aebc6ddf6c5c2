//! The `terraform_version` filter of a search: a range of versions, as
//! Terraform writes version constraints.

/// `<1.5`, `>=1.5,<1.7`, `1.5.7`, `~>1.5`: comparisons of a
/// `terraform_version`, all of which must hold. Pre-release suffixes are
/// ignored (`1.6.0-beta1` compares as `1.6.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRange(Vec<(Cmp, [u64; 3])>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// `1`, `1.5`, `1.5.7`, `v1.5.7-rc1` as three numbers, missing ones 0.
fn version_numbers(text: &str) -> Option<[u64; 3]> {
    let text = text.trim().trim_start_matches('v');
    let core = text.split(['-', '+']).next()?;
    let mut out = [0; 3];
    let mut parts = core.split('.');
    for slot in &mut out {
        match parts.next() {
            Some(p) => *slot = p.parse().ok()?,
            None => break,
        }
    }
    if parts.next().is_some() || core.is_empty() {
        return None;
    }
    Some(out)
}

impl VersionRange {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |part: &str| {
            format!(
                "terraform_version: `{part}` is not a version or a comparison like <1.5, >=1.5 or ~>1.5"
            )
        };
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (cmp, rest) = [
                ("~>", None),
                (">=", Some(Cmp::Ge)),
                ("<=", Some(Cmp::Le)),
                ("!=", Some(Cmp::Ne)),
                (">", Some(Cmp::Gt)),
                ("<", Some(Cmp::Lt)),
                ("=", Some(Cmp::Eq)),
            ]
            .into_iter()
            .find_map(|(op, cmp)| part.strip_prefix(op).map(|rest| (Some(cmp), rest)))
            .unwrap_or((Some(Some(Cmp::Eq)), part));
            let numbers = version_numbers(rest).ok_or_else(|| bad(part))?;
            match cmp.flatten() {
                Some(cmp) => out.push((cmp, numbers)),
                // `~>1.5` allows 1.5 up to 2.0; `~>1.5.2` up to 1.6.
                None => {
                    let given = rest.trim().split('.').count();
                    let upper = match given {
                        0..=2 => numbers[0].checked_add(1).map(|major| [major, 0, 0]),
                        _ => numbers[1]
                            .checked_add(1)
                            .map(|minor| [numbers[0], minor, 0]),
                    }
                    .ok_or_else(|| bad(part))?;
                    out.push((Cmp::Ge, numbers));
                    out.push((Cmp::Lt, upper));
                }
            }
        }
        if out.is_empty() {
            return Err(bad(text));
        }
        Ok(VersionRange(out))
    }

    /// Whether `version` (a state's `terraform_version`) is in the range;
    /// a state without one, or with one that does not parse, is not.
    pub fn contains(&self, version: &str) -> bool {
        let Some(v) = version_numbers(version) else {
            return false;
        };
        self.0.iter().all(|(cmp, bound)| match cmp {
            Cmp::Lt => v < *bound,
            Cmp::Le => v <= *bound,
            Cmp::Gt => v > *bound,
            Cmp::Ge => v >= *bound,
            Cmp::Eq => v == *bound,
            Cmp::Ne => v != *bound,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pessimistic_bound_past_the_largest_number_is_refused() {
        for text in ["~>18446744073709551615", "~>1.18446744073709551615.0"] {
            let e = VersionRange::parse(text).unwrap_err();
            assert!(e.contains("is not a version or a comparison"), "{e}");
        }
        assert!(VersionRange::parse("~>18446744073709551614").is_ok());
    }

    #[test]
    fn version_ranges() {
        let r = |t: &str| VersionRange::parse(t).unwrap();
        assert!(r("<1.5").contains("1.4.6"));
        assert!(!r("<1.5").contains("1.5.0"));
        assert!(r(">=1.5,<1.7").contains("1.6.2"));
        assert!(!r(">=1.5,<1.7").contains("1.7.0"));
        assert!(r("1.5.7").contains("1.5.7") && !r("1.5.7").contains("1.5.6"));
        assert!(r("~>1.5").contains("1.9.0") && !r("~>1.5").contains("2.0.0"));
        assert!(r("~> 1.5.2").contains("1.5.9") && !r("~> 1.5.2").contains("1.6.0"));
        assert!(r("!=1.6.0").contains("1.6.1"));
        assert!(
            r(">=1.6").contains("1.6.0-beta1"),
            "pre-releases compare as their release"
        );
        assert!(!r("<9").contains(""), "no version is in no range");
        for bad in ["", "<", "1.x", ">=1.5,abc", "1.2.3.4"] {
            assert!(VersionRange::parse(bad).is_err(), "{bad}");
        }
    }
}
