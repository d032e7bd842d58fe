//! A GGUF's tokenizer and chat template written as an HF folder's `tokenizer.json` and
//! `tokenizer_config.json`, so a random-weight HF model of the same shape (bench/gpu) tokenises and
//! renders prompts exactly as the GGUF model does — the agent's end-to-end check on a GPU machine,
//! where the GGUF itself is too large to carry.
use std::path::Path;

use serde_json::json;

use super::{GgufSource, ModelSource, load_tokenizer};
use crate::error::{EngineError, Result};

/// Writes `tokenizer.json` and `tokenizer_config.json` (BOS/EOS tokens, the chat template) for
/// the GGUF at `gguf` into `dir` (created if missing).
pub fn write_hf_tokenizer(gguf: &Path, dir: &Path) -> Result<()> {
    let (tok, _, _) = load_tokenizer(&ModelSource::Gguf(gguf.to_path_buf()))?;
    let template = GgufSource::open(gguf)?.chat_template();
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let tj = dir.join("tokenizer.json");
    std::fs::write(&tj, tok.to_json()?).map_err(|e| EngineError::io(&tj, e))?;
    let config = json!({
        "bos_token": tok.bos_token(),
        "eos_token": tok.eos_token(),
        "chat_template": template,
    });
    let tc = dir.join("tokenizer_config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| EngineError::BadFile {
        path: tc.display().to_string(),
        reason: e.to_string(),
    })?;
    std::fs::write(&tc, text).map_err(|e| EngineError::io(&tc, e))?;
    Ok(())
}
