//! Pipeline definitions from a folder of TOML files, one pipeline per file.

use std::path::Path;

use baton_core::{Limits, PipelineSpec};

use crate::{Error, Result};

/// Reads every `*.toml` file of `dir`, in name order. The file's name without
/// `.toml` is the pipeline's id unless the file sets `id`. An unreadable or invalid
/// file fails the whole load with an error naming the file and the field.
pub(crate) fn load_dir(dir: &Path) -> Result<Vec<PipelineSpec>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::Config(format!(
            "cannot read the pipelines folder {}: {e}",
            dir.display()
        ))
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut out: Vec<PipelineSpec> = Vec::with_capacity(files.len());
    for path in files {
        let spec = load_file(&path)?;
        if let Some(other) = out.iter().find(|p| p.id == spec.id) {
            return Err(Error::Config(format!(
                "pipeline file {}: id {:?} is also defined by another file ({:?})",
                path.display(),
                spec.id,
                other.id
            )));
        }
        out.push(spec);
    }
    Ok(out)
}

/// Reads and checks one pipeline file.
pub(crate) fn load_file(path: &Path) -> Result<PipelineSpec> {
    let bad = |what: String| Error::Config(format!("pipeline file {}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut spec: PipelineSpec = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().trim().to_owned();
        match line {
            Some(l) => bad(format!("line {l}: {message}")),
            None => bad(message),
        }
    })?;
    if spec.id.is_empty() {
        spec.id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    spec.validate(&Limits::default())
        .map_err(|e| bad(format!("{}: {}", e.field, e.message)))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, part: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let err = load_file(&path).expect_err(text).to_string();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains(part), "{err} lacks {part:?}");
    }

    #[test]
    fn invalid_files_name_the_file_and_the_field() {
        check(
            "[[steps]]\nname = \"a\"\ncommand = []\n",
            "steps[0].command",
        );
        check(
            "[[steps]]\nname = \"a\"\ncommand = [\"x\"]\ntimeout = \"soon\"\n",
            "steps[0].timeout",
        );
        check(
            "[[steps]]\nname = \"a\"\ncommand = [\"x\"]\nretry = 2\n",
            "line 4: unknown field `retry`",
        );
        check("queue = \"default\"\n", "missing field `steps`");
        check("steps = 3\n", "line 1");
        check(
            "max_attempts = 0\n[[steps]]\nname = \"a\"\ncommand = [\"x\"]\n",
            "max_attempts",
        );
    }

    #[test]
    fn a_folder_loads_with_ids_from_file_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("alfabeta.toml"),
            "queue = \"default\"\npriority = 2\n[labels]\nsource = \"alfabeta\"\n\n\
             [[steps]]\nname = \"fetch\"\ncommand = [\"true\"]\ntimeout = \"10m\"\nretries = 2\n\n\
             [[steps]]\nname = \"load\"\ncommand = [\"echo loaded\"]\nshell = true\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("other.toml"),
            "id = \"named\"\n[[steps]]\nname = \"x\"\ncommand = [\"true\"]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("README.md"), "not a pipeline").unwrap();
        let loaded = load_dir(dir.path()).unwrap();
        let ids: Vec<&str> = loaded.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["alfabeta", "named"]);
        let a = &loaded[0];
        assert_eq!(a.priority, Some(2));
        assert_eq!(a.steps[0].retries, Some(2));
        assert_eq!(a.steps[1].shell, Some(true));
        assert_eq!(a.labels.as_ref().unwrap()["source"], "alfabeta");

        let err = load_dir(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
