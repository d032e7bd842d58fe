//! What planning takes from the Hugging Face hub (through the standard hub cache, [`hubclient`]):
//! the dataset file of `[data.source] kind = "medsynth_hub"`, with the commit it resolved to and
//! its sha256 for the results' meta; and the `config.json` of a hub model whose shape is not
//! known by name, so its memory estimate comes from its real dimensions.
use std::path::{Path, PathBuf};

use hubclient::{Hub, HubError, HubSettings, RepoRef};
use shared::config::ModelEntry;
use shared::plan::ModelShape;
use shared::results::HubDataset;

/// Why the dataset file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HubDataError {
    #[error("data source `medsynth_hub`: {0}")]
    Hub(#[from] HubError),
    #[error("data source `medsynth_hub`: reading {} to hash it: {source}", path.display())]
    Hash {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `file` of the dataset repository `repo` at `revision` (`None` = `main`): the path of its
/// snapshot entry in the hub cache (downloaded when missing, unless offline) and its provenance.
pub fn fetch_dataset(
    repo: &str,
    file: &str,
    revision: Option<&str>,
    settings: &HubSettings,
) -> Result<(PathBuf, HubDataset), HubDataError> {
    let r = RepoRef::dataset(repo, revision)?;
    let got = Hub::new(settings.clone()).get(&r, file)?;
    let sha256 = hubclient::sha256_file(&got.path).map_err(|source| HubDataError::Hash {
        path: got.path.clone(),
        source,
    })?;
    tracing::info!(
        repo,
        file,
        revision = %r.revision,
        commit = %got.commit,
        %sha256,
        downloaded = got.downloaded,
        "dataset from the hub"
    );
    Ok((
        got.path,
        HubDataset {
            repo: repo.into(),
            file: file.into(),
            revision: r.revision,
            commit: got.commit,
            sha256,
        },
    ))
}

/// The shape in a hub model's `config.json` (from the cache, or fetched: a few KB), for a model
/// named by hub id. `None`, with a warning saying why, when the name is no hub id or the file
/// cannot be had (the plan then estimates from the size label and says so).
pub fn model_shape(entry: &ModelEntry, settings: &HubSettings) -> Option<ModelShape> {
    if !hubclient::is_repo_id(&entry.name) || Path::new(&entry.name).exists() {
        return None;
    }
    let fetched = RepoRef::model(&entry.name, entry.revision.as_deref())
        .and_then(|r| Hub::new(settings.clone()).get(&r, "config.json"));
    let path = match fetched {
        Ok(f) => f.path,
        Err(e) => {
            tracing::warn!(
                model = %entry.name,
                error = %e,
                "no config.json for the memory estimate"
            );
            return None;
        }
    };
    let shape = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            ModelShape::from_hf_config_json(&text, &path.display().to_string())
                .map_err(|e| e.to_string())
        });
    match shape {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                model = %entry.name,
                error = %e,
                "config.json unusable for the memory estimate"
            );
            None
        }
    }
}
