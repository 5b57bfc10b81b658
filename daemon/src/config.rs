//! YAML configuration files: parse errors name the offending key and its position, value errors
//! name the key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// A value error for `key`.
pub fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Parses YAML; an empty document is the default configuration.
pub fn from_yaml<T: DeserializeOwned + Default>(text: &str) -> Result<T, String> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_yaml::from_str(text).map_err(|e| e.to_string())
}

/// Reads and parses a YAML file (no validation).
pub fn from_file<T: DeserializeOwned + Default>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_yaml(&text).map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        interval: u32,
    }

    #[test]
    fn empty_is_default_and_errors_name_file_and_key() {
        assert_eq!(from_yaml::<Sample>("  \n").unwrap(), Sample::default());
        assert_eq!(from_yaml::<Sample>("interval: 3").unwrap().interval, 3);
        let dir = std::env::temp_dir().join(format!("wattwise-daemon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, "intervall: 3\n").unwrap();
        let err = from_file::<Sample>(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.yaml") && err.contains("intervall"),
            "{err}"
        );
        let err = from_file::<Sample>(&dir.join("missing.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.yaml"), "{err}");
        assert_eq!(
            invalid("interval", "must be > 0").to_string(),
            "config key `interval`: must be > 0"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
