//! What an identity may do: access levels, key and workspace patterns,
//! and the rules that grant a level on the states they match.

use std::sync::Arc;

use super::file::FileRule;
use crate::settings::ConfigError;
use crate::state::StateRef;

/// Permission levels, each including the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// GET of a state with its `resources` emptied: all
    /// `terraform_remote_state` needs, and none of the resource attributes
    /// where secrets live.
    Outputs,
    /// GET of states, history and versions, and of lock holders.
    Read,
    /// Read, plus writes, LOCK, and UNLOCK of a lock this identity took.
    Write,
    /// Write, plus DELETE, force-unlock and unlocking another's lock.
    Admin,
}

impl Access {
    pub(super) fn parse(text: &str) -> Option<Self> {
        match text {
            "outputs" => Some(Access::Outputs),
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "admin" => Some(Access::Admin),
            _ => None,
        }
    }

    /// The level's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            Access::Outputs => "outputs",
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }
}

/// A key or workspace pattern: `/`-separated segments where `*` matches
/// within one segment and a `**` segment matches any number of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<String>);

impl Glob {
    /// Parses a pattern; `what` names it in the error.
    pub fn parse(what: &str, text: &str) -> Result<Self, String> {
        let glob = Self::parse_name(what, text)?;
        for seg in &glob.0 {
            if let Some(c) = seg
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*')))
            {
                return Err(format!("{what} `{text}` has the character {c:?}"));
            }
        }
        Ok(glob)
    }

    /// Parses a pattern over names that are not state keys (a resource
    /// address, a provider source, a module path): the same segments and
    /// `*`/`**`, with any other character matching itself, since such names
    /// hold brackets and quotes (`module.db["a"]`) that keys never do.
    pub fn parse_name(what: &str, text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err(format!("{what} is empty"));
        }
        let segs: Vec<String> = text.split('/').map(str::to_string).collect();
        for seg in &segs {
            if seg.is_empty() {
                return Err(format!("{what} `{text}` has an empty segment"));
            }
            if seg.contains("**") && seg != "**" {
                return Err(format!("{what} `{text}`: `**` must be a whole segment"));
            }
        }
        Ok(Glob(segs))
    }

    /// Whether every key matches (`**`), and so every workspace name.
    pub fn matches_everything(&self) -> bool {
        self.0.iter().all(|seg| seg == "**")
    }

    /// Whether every name without `/` matches (`*`, `**`): every workspace.
    fn matches_every_name(&self) -> bool {
        matches!(self.0.as_slice(), [one] if one == "*" || one == "**")
    }

    /// Whether `path` (a key or a workspace name) matches.
    pub fn matches(&self, path: &str) -> bool {
        // One segment against a name without `/` (a resource type or
        // address, searched a million at a time) needs no split.
        if let [only] = self.0.as_slice()
            && only != "**"
            && !path.contains('/')
        {
            return match_one(only, path);
        }
        let parts: Vec<&str> = path.split('/').collect();
        match_segments(&self.0, &parts)
    }
}

/// `**` over whole segments, each other segment matched by [`match_one`].
/// Greedy, going back only to the last `**` ([`wildcard`]).
pub(super) fn match_segments(pattern: &[String], parts: &[&str]) -> bool {
    wildcard(
        pattern,
        parts,
        |s| s == "**",
        |seg, part| match_one(seg, part),
    )
}

/// `*` within one segment: the text starts with what comes before the
/// first star, ends with what comes after the last, and holds what lies
/// between stars in order, each found at its leftmost place (any later
/// place leaves less room for the rest). Each search is linear, so the
/// whole match is in pattern plus text steps: going back star by star took
/// pattern times text, and one search of a long pattern over long names
/// ran for a minute.
pub(super) fn match_one(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(rest) = text.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = pieces.collect();
    let Some((last, between)) = middle.split_last() else {
        // No star: the whole text.
        return rest.is_empty();
    };
    let Some(mut rest) = rest.strip_suffix(last) else {
        return false;
    };
    for piece in between {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `text` matches `pattern`, where an element `is_star` matches any
/// run of elements (none too) and any other matches one element it
/// `fits`. A star met sets where to go back to; a mismatch goes back to the
/// last star only, one element further, since that star can take in
/// whatever an earlier one would have: at most pattern × text steps, where
/// trying every split at every star (as this did) took time exponential
/// in the stars of a pattern a search sends.
fn wildcard<P, T>(
    pattern: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    fits: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    // The pattern just after the last star, and where in `text` that
    // star's run ends now.
    let mut back: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && is_star(&pattern[p]) {
            p += 1;
            back = Some((p, t));
        } else if p < pattern.len() && fits(&pattern[p], &text[t]) {
            p += 1;
            t += 1;
        } else if let Some((after_star, run_end)) = back {
            p = after_star;
            t = run_end + 1;
            back = Some((after_star, t));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(is_star)
}

/// Star matching within a segment as [`wildcard`] defines it, to check
/// [`match_one`] against.
#[cfg(test)]
pub(super) fn wildcard_for_tests(pattern: &[u8], text: &[u8]) -> bool {
    wildcard(pattern, text, |&c| c == b'*', |p, t| p == t)
}

/// The level and workspace patterns of a rule, checked.
pub(super) fn level_and_workspaces(
    setting: &str,
    access: &str,
    workspaces: &[String],
) -> Result<(Access, Vec<Glob>), ConfigError> {
    let invalid = |why: String| ConfigError::invalid(setting, why);
    let level = Access::parse(access).ok_or_else(|| {
        invalid(format!(
            "access `{access}` is not one of outputs, read, write, admin"
        ))
    })?;
    let workspaces = workspaces
        .iter()
        .map(|w| Glob::parse("workspaces", w))
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    Ok((level, workspaces))
}

/// One grant: a level on the states whose key (and workspace) match.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(super) keys: Glob,
    /// Empty: every workspace.
    pub(super) workspaces: Vec<Glob>,
    pub(super) access: Access,
}

impl Rule {
    pub(super) fn parse(owner: &str, rule: &FileRule) -> Result<Self, ConfigError> {
        let setting = format!("{owner}.rules");
        let keys =
            Glob::parse("keys", &rule.keys).map_err(|e| ConfigError::invalid(&setting, e))?;
        let (access, workspaces) = level_and_workspaces(&setting, &rule.access, &rule.workspaces)?;
        Ok(Rule {
            keys,
            workspaces,
            access,
        })
    }

    pub(super) fn grants(&self, state: &StateRef) -> Option<Access> {
        let ws_ok = self.workspaces.is_empty()
            || self.workspaces.iter().any(|w| w.matches(state.workspace()));
        (ws_ok && self.keys.matches(state.key())).then_some(self.access)
    }
}

/// Someone who authenticated, with what they were granted.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `user:<name>`, `token:<name>`, `cert:<CN>` or `oidc:<iss>#<sub>`;
    /// what logs, audit and lock records show.
    pub name: String,
    pub(super) rules: Arc<[Rule]>,
    /// The verified claims of a CI identity token.
    pub(super) claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

impl Identity {
    /// The highest level any rule grants on `state`, `None` when none does.
    pub fn access(&self, state: &StateRef) -> Option<Access> {
        self.rules.iter().filter_map(|r| r.grants(state)).max()
    }

    /// Whether one rule lets it read every state, in every workspace: what
    /// it is told of all states together (a count) then tells it nothing
    /// it may not see state by state.
    pub fn reads_everything(&self) -> bool {
        self.rules.iter().any(|r| {
            r.access >= Access::Read
                && r.keys.matches_everything()
                && (r.workspaces.is_empty() || r.workspaces.iter().any(Glob::matches_every_name))
        })
    }
}
