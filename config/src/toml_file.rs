//! Reading a TOML file into a type, with errors that name the file and the key path.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::ConfigError;

pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })
}

/// `text` as a `T`; `file` is how errors name the file. A syntax error is placed by line,
/// any other by the path of its key ("memory.limit").
pub fn parse<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    let error = |field: String, e: &toml::de::Error| ConfigError::Parse {
        file: file.to_string(),
        field,
        message: e.message().lines().next().unwrap_or_default().trim().to_string(),
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| error(line_of(text, &e), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { line_of(text, e.inner()) } else { path };
        error(field, e.inner())
    })
}

fn line_of(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => format!(
            "line {}",
            text.as_bytes()[..span.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
        ),
        None => "(document)".to_string(),
    }
}
