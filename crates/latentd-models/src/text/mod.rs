//! Text conditioning: CLIP's tokenizer and text encoder (Stable Diffusion), BERT's
//! WordPiece tokenizer and LDM-BERT (the CompVis LDM text-to-image pipeline).

mod added_tokens;
pub mod bert_tokenizer;
mod bert_tokenizer_files;
pub mod clip;
pub mod config;
pub mod ldm_bert;
pub mod ldm_bert_config;
mod normalize;
mod token_ids;
pub mod tokenizer;
mod tokenizer_files;

pub use bert_tokenizer::{BertNormalization, BertTokenizer, LDM_MAX_LENGTH};
pub use clip::ClipTextModel;
pub use config::{ClipTextConfig, HiddenAct};
pub use ldm_bert::LdmBertModel;
pub use ldm_bert_config::{LdmBertActivation, LdmBertConfig};
pub use tokenizer::{ClipTokenizer, ClipTokenizerKind};
