//! What may run: the commands policy. A command job or a pipeline step names a
//! program; the policy decides from the file it resolves to (through `PATH` as the
//! spawn would, then with every symlink resolved), never from the name as written, so
//! that neither a relative path, a `PATH` set in the job's `env`, nor a symlink planted
//! in an allowed folder can reach another program. `shell: true` runs `sh -c`: it is
//! allowed only when the shell is.

use std::path::{Path, PathBuf};

/// Which executables command jobs and pipeline steps may run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CommandPolicy {
    /// Anything (the default: a local engine runs what its user asks).
    #[default]
    Any,
    /// Nothing: command and pipeline jobs are refused.
    Nothing,
    /// Only files matching one of these absolute patterns (`*` matches within one
    /// path component).
    Allow(Vec<String>),
}

/// A program the policy refuses: the message names the policy and the executable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub message: String,
}

impl CommandPolicy {
    /// Parses the configured form: `"any"`, `"none"`, or a list of absolute paths and
    /// patterns. Patterns are stored with the symlinks of their folders resolved, like
    /// the paths they are matched against.
    pub fn from_list(patterns: &[String]) -> Result<CommandPolicy, String> {
        let mut out = Vec::with_capacity(patterns.len());
        for p in patterns {
            if !p.starts_with('/') {
                return Err(format!(
                    "{p:?} is not an absolute path (e.g. \"/usr/bin/python3\" or \"/opt/jobs/*\")"
                ));
            }
            if p.contains("**") {
                return Err(format!(
                    "{p:?}: \"**\" is not supported; \"*\" matches within one folder"
                ));
            }
            out.push(canonical_pattern(p));
        }
        Ok(CommandPolicy::Allow(out))
    }

    /// Parses `"any"` or `"none"`.
    pub fn from_word(word: &str) -> Result<CommandPolicy, String> {
        match word {
            "any" => Ok(CommandPolicy::Any),
            "none" => Ok(CommandPolicy::Nothing),
            other => Err(format!(
                "{other:?} is not a commands policy; expected \"any\", \"none\" or a list of absolute paths"
            )),
        }
    }

    /// How the policy reads in messages.
    pub fn describe(&self) -> String {
        match self {
            CommandPolicy::Any => "\"any\"".into(),
            CommandPolicy::Nothing => "\"none\"".into(),
            CommandPolicy::Allow(list) => format!("{list:?}"),
        }
    }

    pub fn is_any(&self) -> bool {
        matches!(self, CommandPolicy::Any)
    }

    /// Refuses, under a restrictive policy, the variables that make an allowed program
    /// or its interpreter run other code: the dynamic loader's (`LD_PRELOAD`, ...),
    /// the shells' (`BASH_ENV` is expanded, command substitution included, by every
    /// non-interactive bash), and the interpreters' module and option paths.
    pub fn check_env<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<(), Refused> {
        if self.is_any() {
            return Ok(());
        }
        match names.into_iter().find(|n| is_code_injecting(n)) {
            None => Ok(()),
            Some(name) => Err(Refused {
                message: format!(
                    "the commands policy ({}) does not allow setting {name}: it makes an allowed program run other code",
                    self.describe()
                ),
            }),
        }
    }

    /// Checks the program `argv0` that a process with environment `env` (the job's
    /// own variables, over the engine's) and folder `cwd` would run. Returns the
    /// resolved file, which the spawn then runs, so that what was checked is what runs.
    pub fn check(
        &self,
        argv0: &str,
        env: &[(String, String)],
        cwd: Option<&str>,
    ) -> Result<Option<PathBuf>, Refused> {
        let refused = |what: String| Refused {
            message: format!(
                "the commands policy ({}) does not allow {what}",
                self.describe()
            ),
        };
        match self {
            CommandPolicy::Any => Ok(None),
            CommandPolicy::Nothing => Err(refused(format!("{argv0:?}"))),
            CommandPolicy::Allow(patterns) => {
                let Some(found) = resolve(argv0, env, cwd) else {
                    return Err(refused(format!("{argv0:?}: no such executable")));
                };
                let text = found.to_string_lossy();
                if patterns.iter().any(|p| glob_match(p, &text)) {
                    Ok(Some(found))
                } else if text == argv0 {
                    Err(refused(format!("{argv0:?}")))
                } else {
                    Err(refused(format!("{argv0:?} (resolved to {text:?})")))
                }
            }
        }
    }
}

/// Variables a job may not set under a restrictive policy (see
/// [`CommandPolicy::check_env`]).
const CODE_INJECTING: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "GCONV_PATH",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
];

fn is_code_injecting(name: &str) -> bool {
    name.starts_with("LD_") || name.starts_with("BASH_FUNC_") || CODE_INJECTING.contains(&name)
}

/// Finds the file `argv0` names as the spawn would: a name with a `/` is a path (from
/// `cwd` when relative), a bare name is looked up in `PATH` (the job's own when its
/// `env` sets one); then every symlink is resolved. `None` when there is none.
pub fn resolve(argv0: &str, env: &[(String, String)], cwd: Option<&str>) -> Option<PathBuf> {
    let base = match cwd {
        Some(c) => PathBuf::from(c),
        None => std::env::current_dir().ok()?,
    };
    let candidate = if argv0.contains('/') {
        Some(base.join(argv0))
    } else {
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_else(|| "/usr/bin:/bin".into());
        path.split(':')
            .map(|dir| if dir.is_empty() { "." } else { dir })
            .map(|dir| base.join(dir).join(argv0))
            .find(|p| is_executable(p))
    }?;
    let real = std::fs::canonicalize(candidate).ok()?;
    is_executable(&real).then_some(real)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A pattern with the symlinks of its fixed part resolved: the folder of a pattern
/// with a `*` in its last part, or the whole path without one. A path that does not
/// exist (yet) is kept as written.
fn canonical_pattern(p: &str) -> String {
    let path = Path::new(p);
    let name_has_star = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains('*'));
    if p.contains('*') && !name_has_star {
        return p.to_owned();
    }
    if name_has_star {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return p.to_owned();
        };
        return match std::fs::canonicalize(dir) {
            Ok(d) => d.join(name).to_string_lossy().into_owned(),
            Err(_) => p.to_owned(),
        };
    }
    match std::fs::canonicalize(path) {
        Ok(real) => real.to_string_lossy().into_owned(),
        Err(_) => p.to_owned(),
    }
}

/// `*` matches any run of characters but `/`; everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star
            && t[st] != b'/'
        {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_one_folder() {
        let check = |p: &str, t: &str, expected: bool| {
            assert_eq!(glob_match(p, t), expected, "{p} vs {t}");
        };
        check("/opt/jobs/*", "/opt/jobs/a", true);
        check("/opt/jobs/*", "/opt/jobs/sub/a", false);
        check("/opt/jobs/*", "/opt/jobsx/a", false);
        check("/usr/bin/python3", "/usr/bin/python3", true);
        check("/usr/bin/python3", "/usr/bin/python3.12", false);
        check("/usr/bin/python3*", "/usr/bin/python3.12", true);
        check("/opt/*/run", "/opt/a/run", true);
        check("/opt/*/run", "/opt/a/b/run", false);
    }

    #[test]
    fn bad_policies_are_named() {
        let err = CommandPolicy::from_list(&["python3".into()]).unwrap_err();
        assert!(err.contains("\"python3\" is not an absolute path"), "{err}");
        let err = CommandPolicy::from_word("some").unwrap_err();
        assert!(err.contains("\"some\" is not a commands policy"), "{err}");
    }

    #[test]
    fn programs_are_judged_by_the_file_they_resolve_to() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        let tool = allowed.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A symlink planted in the allowed folder that leads out of it.
        let sh = resolve("sh", &[], None).unwrap();
        std::os::unix::fs::symlink(&sh, allowed.join("sneaky")).unwrap();
        let policy = CommandPolicy::from_list(&[format!("{}/*", allowed.display())]).unwrap();
        let path_env = vec![("PATH".to_owned(), allowed.display().to_string())];
        assert!(policy.check("tool", &path_env, None).is_ok());
        assert!(policy.check(tool.to_str().unwrap(), &[], None).is_ok());
        let err = policy.check("sneaky", &path_env, None).unwrap_err();
        assert!(err.message.contains("resolved to"), "{}", err.message);
        assert!(policy.check("sh", &[], None).is_err());
        // A relative path is read from the job's folder.
        assert!(policy.check("./tool", &[], allowed.to_str()).is_ok());
        assert!(policy.check("nope-not-here", &path_env, None).is_err());
        assert!(
            CommandPolicy::Nothing
                .check("tool", &path_env, None)
                .is_err()
        );
        assert_eq!(CommandPolicy::Any.check("anything", &[], None), Ok(None));
    }
}
