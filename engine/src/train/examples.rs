//! Records → token ids, for training and for inference, through one builder so both sides use
//! the model's own tokenizer (pitfall 1) and the same chat template (pitfall 4).
//!
//! A training example is the inference prompt's tokens followed by the answer and the template's
//! end-of-turn token; the prompt tokens are checked to be exactly the inference prompt's tokens.
//! Too-long examples lose the end of the dialogue, never the answer.
use shared::config::PromptConfig;
use shared::dataset::Record;

use super::TrainError;
use super::batch::Example;
use crate::template::ChatTemplate;
use crate::tokenizer::{ModelTokenizer, SpecialTokens};

/// Renders and tokenizes records the same way for training and inference.
#[derive(Debug, Clone, Copy)]
pub struct ExampleBuilder<'a> {
    pub tokenizer: &'a ModelTokenizer,
    pub template: &'a ChatTemplate,
    pub prompt: &'a PromptConfig,
    /// Most tokens an example (prompt + answer + end-of-turn) may have.
    pub max_length: usize,
}

impl<'a> ExampleBuilder<'a> {
    fn encode(&self, text: &str) -> Result<Vec<u32>, TrainError> {
        // The template writes BOS itself where the model wants one.
        Ok(self.tokenizer.encode(text, SpecialTokens::Omit)?)
    }

    /// The inference prompt's tokens for `dialogue` (system + user turns + assistant header).
    pub fn prompt_ids(&self, dialogue: &str) -> Result<Vec<u32>, TrainError> {
        let messages = shared::prompt::messages(self.prompt, dialogue);
        self.encode(&self.template.render_prompt(&messages)?)
    }

    /// Prompt and full token ids of `record` with `dialogue` standing for its dialogue.
    fn render(&self, record: &Record, dialogue: &str) -> Result<(Vec<u32>, Vec<u32>), TrainError> {
        let messages = shared::prompt::messages(self.prompt, dialogue);
        let answer = shared::prompt::answer(self.prompt, &record.code, &record.description);
        let (prompt, full) = self.template.render_full(&messages, &answer)?;
        Ok((self.encode(&prompt)?, self.encode(&full)?))
    }

    /// One training example; errors name the record.
    pub fn example(&self, record: &Record) -> Result<Example, TrainError> {
        let bad = |what: String| TrainError::Data(format!("record `{}`: {what}", record.id));
        let (mut prompt, mut full) = self.render(record, &record.dialogue)?;
        if full.len() > self.max_length {
            (prompt, full) = self.truncated(record, prompt.len(), full.len())?;
        }
        if !full.starts_with(&prompt) {
            return Err(bad(
                "the training tokens do not start with the inference prompt's tokens (template or tokenizer \
                 merges across the prompt/answer boundary)"
                    .into(),
            ));
        }
        // render_full ends the text with the end-of-turn marker; it must be one stop token.
        match full.last() {
            Some(&last) if self.tokenizer.is_stop(last) && full.len() > prompt.len() + 1 => {}
            _ => {
                return Err(bad(format!(
                    "the answer does not end with a stop token (end-of-turn `{}`)",
                    self.template.end_of_turn()
                )));
            }
        }
        Ok(Example {
            prompt_len: prompt.len(),
            ids: full,
        })
    }

    /// Cuts the dialogue's end until prompt + answer fit in `max_length`.
    fn truncated(
        &self,
        record: &Record,
        prompt_len: usize,
        full_len: usize,
    ) -> Result<(Vec<u32>, Vec<u32>), TrainError> {
        let dialogue = self.encode(&record.dialogue)?;
        let answer_len = full_len - prompt_len;
        let mut keep = dialogue.len();
        let mut over = full_len - self.max_length;
        // Re-tokenizing a cut text can shift a token or two at the cut: retry with the overshoot.
        for _ in 0..8 {
            if over >= keep {
                return Err(TrainError::Data(format!(
                    "record `{}`: max_length {} leaves no room for the dialogue (answer {answer_len} tokens, \
                     prompt without dialogue ~{} tokens)",
                    record.id,
                    self.max_length,
                    prompt_len.saturating_sub(dialogue.len())
                )));
            }
            keep -= over;
            let text = self
                .tokenizer
                .decode(&dialogue[..keep], SpecialTokens::Omit)?;
            let (p, f) = self.render(record, &text)?;
            if f.len() <= self.max_length {
                return Ok((p, f));
            }
            over = f.len() - self.max_length;
        }
        Err(TrainError::Data(format!(
            "record `{}`: could not truncate the dialogue to fit max_length {}",
            record.id, self.max_length
        )))
    }

    /// Every record as an example, in order.
    pub fn examples(&self, records: &[Record]) -> Result<Vec<Example>, TrainError> {
        records.iter().map(|r| self.example(r)).collect()
    }
}
