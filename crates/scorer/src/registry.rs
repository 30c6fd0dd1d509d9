//! A directory of model files, looked up by name at scoring time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::{Model, ModelError};

/// Models by name, shared between the SQL functions and whoever (re)loads them.
///
/// Swapping a model is atomic: a scoring call sees either the old or the new one.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    models: RwLock<HashMap<String, Arc<Model>>>,
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every `*.json` model in `dir` (other files, such as model cards, are ignored).
    /// A model's name is its file stem.
    pub fn load_dir(&self, dir: &Path) -> Result<usize, ModelError> {
        let io = |source| ModelError::Io {
            path: dir.into(),
            source,
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut n = 0;
        for p in paths {
            let mut m = Model::load(&p)?;
            if let Some(stem) = p.file_stem() {
                m.name = stem.to_string_lossy().to_string();
            }
            self.insert(m);
            n += 1;
        }
        Ok(n)
    }

    /// Adds or replaces a model.
    pub fn insert(&self, m: Model) {
        self.models
            .write()
            .expect("registry lock")
            .insert(m.name.clone(), Arc::new(m));
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.models
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
    }

    /// Names of all loaded models, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<_> = self
            .models
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }
}
