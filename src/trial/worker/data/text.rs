//! A text corpus read as bytes, for next-token models.

use super::*;

pub(super) fn text_corpus(
    path: &Path,
    context: usize,
    vocab: usize,
    fraction: f64,
) -> Result<SequenceData, DataError> {
    let bytes = read(path)?;
    if vocab < 256 {
        return Err(DataError::Shape(format!(
            "text data is byte-level and needs vocab_size >= 256, got {vocab}"
        )));
    }
    let window = context + 1;
    let split = split_point(bytes.len(), fraction, context);
    if split < window {
        return Err(format_error(
            path,
            format!(
                "{} bytes are too few for windows of {window} bytes in both the training and validation splits",
                bytes.len()
            ),
        ));
    }
    Ok(SequenceData {
        context_length: context,
        tokens: bytes.into_iter().map(u16::from).collect(),
        split,
    })
}
