//! Training examples and batches: token ids with the answer-only label mask, left-padded batches,
//! and the (position, target) pairs the loss is computed on.
//!
//! Labels are decided by **position**, never by token id: the first `prompt_len` tokens of an
//! example are ignored (pitfall 2), every token after them — the answer and the end-of-turn/EOS
//! that closes it — is a label (pitfall 3), and padding is never a label because the mask comes
//! from each row's length, so a pad id equal to EOS cannot hide the EOS label.
use candle_core::{Device, Tensor};

/// The label value for positions that do not count in the loss (HF's convention).
pub const IGNORE: i64 = -100;

/// One tokenized training example: `ids[..prompt_len]` is the prompt as inference renders it,
/// `ids[prompt_len..]` the answer followed by the end-of-turn token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

impl Example {
    /// HF-style labels aligned with `ids`: [`IGNORE`] on the prompt, the token id on the answer.
    pub fn labels(&self) -> Vec<i64> {
        self.ids
            .iter()
            .enumerate()
            .map(|(j, &t)| {
                if j < self.prompt_len {
                    IGNORE
                } else {
                    i64::from(t)
                }
            })
            .collect()
    }

    /// Tokens that carry a label.
    pub fn label_count(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// A left-padded batch ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[b, width]` u32, left-padded.
    pub ids: Tensor,
    /// Padding columns per row.
    pub pads: Vec<usize>,
    pub width: usize,
    /// Flat indices (`row · width + column`) of the positions whose next token is a label.
    pub positions: Tensor,
    /// The label (next token) at each of `positions`, u32.
    pub targets: Tensor,
    /// Number of labels (length of `positions`).
    pub label_tokens: usize,
    /// Real (non-padding) tokens in the batch.
    pub real_tokens: usize,
    /// The labels per row in the padded layout, [`IGNORE`] on prompt and padding (for inspection
    /// and tests; the loss uses `positions`/`targets`).
    pub labels: Vec<Vec<i64>>,
}

/// Left-pads `examples` into one batch. `pad_id` fills padding columns; it never becomes a label.
pub fn collate(examples: &[&Example], pad_id: u32, device: &Device) -> candle_core::Result<Batch> {
    if examples.is_empty() {
        candle_core::bail!("collate: empty batch");
    }
    let width = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(examples.len() * width);
    let mut pads = Vec::with_capacity(examples.len());
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut labels = Vec::with_capacity(examples.len());
    let mut real_tokens = 0;
    for (r, e) in examples.iter().enumerate() {
        if e.prompt_len == 0 || e.prompt_len > e.ids.len() {
            candle_core::bail!(
                "collate: example {r} has prompt length {} of {} tokens",
                e.prompt_len,
                e.ids.len()
            );
        }
        let pad = width - e.ids.len();
        pads.push(pad);
        ids.extend(std::iter::repeat_n(pad_id, pad));
        ids.extend_from_slice(&e.ids);
        real_tokens += e.ids.len();
        let mut row = vec![IGNORE; pad];
        row.extend(e.labels());
        labels.push(row);
        // Token j (a label) is predicted from column pad + j - 1.
        for j in e.prompt_len..e.ids.len() {
            positions.push((r * width + pad + j - 1) as u32);
            targets.push(e.ids[j]);
        }
    }
    let label_tokens = positions.len();
    Ok(Batch {
        ids: Tensor::from_vec(ids, (examples.len(), width), device)?,
        pads,
        width,
        positions: Tensor::from_vec(positions, label_tokens, device)?,
        targets: Tensor::from_vec(targets, label_tokens, device)?,
        label_tokens,
        real_tokens,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_answer_and_eos_only_and_padding_equal_to_eos_is_not_a_label() {
        let eos = 2;
        let a = Example {
            ids: vec![1, 10, 11, 12, 20, 21, eos],
            prompt_len: 4,
        };
        let b = Example {
            ids: vec![1, 13, 22, eos],
            prompt_len: 2,
        };
        // Pad with the EOS id on purpose: masking by id would drop b's EOS label or label padding.
        let batch = collate(&[&a, &b], eos, &Device::Cpu).unwrap();
        assert_eq!(batch.width, 7);
        assert_eq!(batch.pads, vec![0, 3]);
        assert_eq!(
            batch.labels[0],
            vec![IGNORE, IGNORE, IGNORE, IGNORE, 20, 21, 2]
        );
        assert_eq!(
            batch.labels[1],
            vec![IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, 22, 2]
        );
        assert_eq!(batch.label_tokens, 5);
        assert_eq!(batch.real_tokens, 11);
        assert_eq!(
            batch.targets.to_vec1::<u32>().unwrap(),
            vec![20, 21, 2, 22, 2]
        );
        // Row 0 predicts from columns 3,4,5; row 1 (offset 7) from columns 4,5.
        assert_eq!(
            batch.positions.to_vec1::<u32>().unwrap(),
            vec![3, 4, 5, 7 + 4, 7 + 5]
        );
        let ids: Vec<Vec<u32>> = batch.ids.to_vec2().unwrap();
        assert_eq!(ids[1], vec![eos, eos, eos, 1, 13, 22, eos]);
    }

    #[test]
    fn an_example_needs_a_prompt() {
        let e = Example {
            ids: vec![5, 6],
            prompt_len: 0,
        };
        assert!(collate(&[&e], 0, &Device::Cpu).is_err());
    }
}
