//! Image → local binary map (`testbed/images.yaml`): there is no container runtime,
//! so an image names which host binary a container runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Size limit of the map file: it is a hand-written list of a few entries.
const MAP_FILE_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("reading image map {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image map {path} is larger than {MAP_FILE_BYTES_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("parsing image map {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<serde_saphyr::Error>,
    },
    #[error("image {0:?} is not in the image map")]
    Unknown(String),
    #[error("container has neither a command nor an image entrypoint")]
    NoEntrypoint,
    #[error("executable {0:?} not found (absolute path missing, not on PATH)")]
    NotFound(String),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ImageEntry {
    pub repository: String,
    pub binary: String,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ImageMap {
    pub images: Vec<ImageEntry>,
}

/// The repository part of an image reference: no tag/digest, no registry host,
/// no `library/` (Docker Hub's implicit namespace).
pub fn repository(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    let no_tag = match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    };
    let mut parts: Vec<&str> = no_tag.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            parts.remove(0);
        }
    }
    if parts.len() > 1 && parts[0] == "library" {
        parts.remove(0);
    }
    parts.join("/")
}

/// `${VAR}` expansion from `vars`; an unknown variable expands to nothing (as in sh).
pub fn expand_braces(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find('}') {
            Some(end) => {
                let name = &rest[start + 2..start + 2 + end];
                out.push_str(vars.get(name).map(String::as_str).unwrap_or(""));
                rest = &rest[start + 2 + end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// What a container runs: the resolved executable and its full argv (argv[0] included).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub executable: PathBuf,
    pub argv: Vec<String>,
    /// Directory of the image's binary, put first on the container's PATH so a
    /// `sh -c "kubectl …"` finds the image's tools as it would inside the image.
    pub image_dir: Option<PathBuf>,
}

impl ImageMap {
    pub fn load(path: &Path, vars: &HashMap<String, String>) -> Result<Self, ImageError> {
        let meta = std::fs::metadata(path).map_err(|source| ImageError::Read {
            path: path.into(),
            source,
        })?;
        if meta.len() > MAP_FILE_BYTES_MAX {
            return Err(ImageError::TooLarge { path: path.into() });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ImageError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, vars).map_err(|source| ImageError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    pub fn parse(text: &str, vars: &HashMap<String, String>) -> Result<Self, serde_saphyr::Error> {
        let mut map: ImageMap = serde_saphyr::from_str(text)?;
        for e in &mut map.images {
            e.binary = expand_braces(&e.binary, vars);
        }
        Ok(map)
    }

    /// Exact repository match first, then a match on the trailing path components
    /// (`ghcr.io/acme/flashsale/operator` runs `flashsale/operator`).
    pub fn lookup(&self, image: &str) -> Option<&ImageEntry> {
        let repo = repository(image);
        self.images
            .iter()
            .find(|e| e.repository == repo)
            .or_else(|| {
                self.images
                    .iter()
                    .find(|e| repo.ends_with(&format!("/{}", e.repository)))
            })
    }

    /// Kubernetes semantics: `command` replaces the entrypoint, `args` the default
    /// CMD. A command[0] whose file name is the image binary's runs that binary
    /// (manifests name `/usr/local/bin/stock-node`, which exists only in the image);
    /// otherwise an existing absolute path runs as is, and a bare name is looked up
    /// on `path_var`.
    pub fn resolve(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
        path_var: &str,
    ) -> Result<Resolved, ImageError> {
        let entry = self.lookup(image);
        let image_bin = entry.map(|e| resolve_executable(&e.binary, path_var));
        let image_dir = image_bin
            .as_ref()
            .and_then(|b| b.as_ref().ok())
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let (argv, executable) = if let Some(cmd0) = command.first() {
            let mut argv: Vec<String> = command.to_vec();
            argv.extend(args.iter().cloned());
            let base = Path::new(cmd0).file_name().map(|s| s.to_os_string());
            let image_named = entry
                .zip(base.as_ref())
                .map(|(e, b)| Path::new(&e.binary).file_name() == Some(b.as_os_str()))
                .unwrap_or(false);
            let exe = match (&image_bin, image_named) {
                (Some(Ok(bin)), true) => bin.clone(),
                _ => {
                    let p = Path::new(cmd0);
                    if p.is_absolute() && p.exists() {
                        p.to_path_buf()
                    } else {
                        let bare = base
                            .map(|b| b.to_string_lossy().into_owned())
                            .unwrap_or_else(|| cmd0.clone());
                        search_path(&bare, image_dir.as_deref(), path_var)
                            .ok_or_else(|| ImageError::NotFound(cmd0.clone()))?
                    }
                }
            };
            (argv, exe)
        } else {
            let entry = entry.ok_or_else(|| ImageError::Unknown(image.to_string()))?;
            let bin = image_bin
                .ok_or(ImageError::NoEntrypoint)?
                .map_err(|_| ImageError::NotFound(entry.binary.clone()))?;
            let mut argv = vec![entry.binary.clone()];
            if args.is_empty() {
                argv.extend(entry.args.iter().cloned());
            } else {
                argv.extend(args.iter().cloned());
            }
            (argv, bin)
        };
        Ok(Resolved {
            executable,
            argv,
            image_dir,
        })
    }
}

fn resolve_executable(bin: &str, path_var: &str) -> Result<PathBuf, ImageError> {
    if bin.contains('/') {
        let p = PathBuf::from(bin);
        if p.exists() {
            Ok(p)
        } else {
            Err(ImageError::NotFound(bin.to_string()))
        }
    } else {
        search_path(bin, None, path_var).ok_or_else(|| ImageError::NotFound(bin.to_string()))
    }
}

fn search_path(name: &str, first: Option<&Path>, path_var: &str) -> Option<PathBuf> {
    first
        .into_iter()
        .map(Path::to_path_buf)
        .chain(std::env::split_paths(path_var))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"
images:
  - repository: flashsale/stock-node
    binary: ${TARGET}/release/stock-node
  - repository: redis
    binary: /usr/bin/redis-server
  - repository: busybox
    binary: /bin/sh
  - repository: python
    binary: python3
    args: ["-m", "http.server"]
"#;

    fn map() -> ImageMap {
        let vars = HashMap::from([("TARGET".to_string(), "/t".to_string())]);
        ImageMap::parse(MAP, &vars).unwrap()
    }

    #[test]
    fn repository_ignores_tag_registry_and_library() {
        assert_eq!(repository("redis:7.2"), "redis");
        assert_eq!(repository("docker.io/library/redis:7.2"), "redis");
        assert_eq!(repository("ghcr.io/acme/op:v1"), "acme/op");
        assert_eq!(
            repository("localhost:5000/flashsale/stock-node:dev"),
            "flashsale/stock-node"
        );
        assert_eq!(repository("registry.k8s.io/kubectl:v1.36.3"), "kubectl");
        assert_eq!(repository("busybox@sha256:abc"), "busybox");
    }

    #[test]
    fn env_expansion_in_binary_paths() {
        assert_eq!(
            map().lookup("flashsale/stock-node:1").unwrap().binary,
            "/t/release/stock-node"
        );
        assert_eq!(expand_braces("${NOPE}/x${", &HashMap::new()), "/x${");
    }

    #[test]
    fn lookup_matches_trailing_components() {
        let m = map();
        assert_eq!(
            m.lookup("ghcr.io/acme/flashsale/stock-node:v2")
                .unwrap()
                .repository,
            "flashsale/stock-node"
        );
        assert!(m.lookup("nginx").is_none());
    }

    #[test]
    fn command_in_image_runs_mapped_binary_and_bare_commands_use_path() {
        let m = map();
        // redis-server exists on this machine only if installed; /bin/sh always does.
        let r = m
            .resolve(
                "busybox",
                &["sh".into(), "-c".into(), "echo hi".into()],
                &[],
                "/usr/bin:/bin",
            )
            .unwrap();
        assert_eq!(r.executable, PathBuf::from("/bin/sh"));
        assert_eq!(r.argv, vec!["sh", "-c", "echo hi"]);
        let r = m
            .resolve(
                "busybox",
                &["/opt/image/bin/sh".into()],
                &[],
                "/usr/bin:/bin",
            )
            .unwrap();
        assert_eq!(
            r.executable,
            PathBuf::from("/bin/sh"),
            "image path of the image's binary maps to it"
        );
        let r = m
            .resolve("busybox", &[], &["-c".into(), "true".into()], "/bin")
            .unwrap();
        assert_eq!(r.argv, vec!["/bin/sh", "-c", "true"]);
    }

    #[test]
    fn default_args_apply_only_without_args() {
        let m = map();
        let Ok(r) = m.resolve(
            "python:3.12",
            &[],
            &[],
            "/usr/bin:/bin:/usr/local/bin:/root/.pyenv/shims",
        ) else {
            return; // no python3 on this PATH: nothing to check
        };
        assert_eq!(r.argv, vec!["python3", "-m", "http.server"]);
        let r = m
            .resolve(
                "python:3.12",
                &[],
                &["-V".into()],
                "/usr/bin:/bin:/usr/local/bin:/root/.pyenv/shims",
            )
            .unwrap();
        assert_eq!(r.argv, vec!["python3", "-V"]);
    }

    #[test]
    fn unknown_image_without_command_is_an_error() {
        assert!(matches!(
            map().resolve("nginx", &[], &[], "/bin"),
            Err(ImageError::Unknown(_))
        ));
        assert!(matches!(
            map().resolve("nginx", &["no-such-binary-xyz".into()], &[], "/bin"),
            Err(ImageError::NotFound(_))
        ));
    }
}
