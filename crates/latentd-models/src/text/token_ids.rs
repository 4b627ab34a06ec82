//! The input check the text encoders share.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Checks token ids `[B, T]` for a text encoder (`encoder` names it in errors): U32, not
/// empty, at most `max_positions` long, every id below `vocab_size`. Returns `T`.
pub(crate) fn check_token_ids(
    input_ids: &Tensor,
    max_positions: usize,
    vocab_size: usize,
    encoder: &str,
) -> Result<usize> {
    let (batch, seq_len) = input_ids.dims2().map_err(|_| {
        Error::InvalidArgument(format!(
            "input_ids must be [B, T], got {:?}",
            input_ids.dims()
        ))
    })?;
    if input_ids.dtype() != DType::U32 {
        return Err(Error::InvalidArgument(format!(
            "input_ids must be U32, got {:?}",
            input_ids.dtype()
        )));
    }
    if batch == 0 || seq_len == 0 {
        return Err(Error::InvalidArgument(format!(
            "input_ids is empty: {:?}",
            input_ids.dims()
        )));
    }
    if seq_len > max_positions {
        return Err(Error::InvalidArgument(format!(
            "{seq_len} tokens exceed {encoder}'s {max_positions} positions"
        )));
    }
    let max_id = input_ids.max_all()?.to_scalar::<u32>()?;
    if max_id as usize >= vocab_size {
        return Err(Error::InvalidArgument(format!(
            "token id {max_id} is outside the vocabulary of {vocab_size} tokens"
        )));
    }
    Ok(seq_len)
}
