//! Text in and out of a decoder: Hugging Face's `tokenizers` reading the deployment's
//! `tokenizer.json`, its `tokenizer_config.json` (chat template, special tokens) and the
//! model's `config.json` (end-of-sequence ids), chat templates rendered with `minijinja`
//! as Hugging Face's `apply_chat_template` renders them (`trim_blocks`, `lstrip_blocks`,
//! Python string methods, `raise_exception`, `bos_token`, `add_generation_prompt`), and
//! streaming detokenization that never splits a character.

use serde::Deserialize;
use serde_json::Value;
use tokenizers::Tokenizer;
use webaccel_api::generate::ChatMessage;

/// Why a tokenizer, its configuration or a chat could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TextError {
    #[error("tokenizer.json is not a tokenizer: {0}")]
    Tokenizer(String),
    #[error("{file} is not valid JSON: {reason}")]
    Config { file: &'static str, reason: String },
    #[error("the chat template does not compile: {0}")]
    Template(String),
    #[error(
        "this model has no chat template (neither tokenizer_config.json nor the deployment gives one): use the completions API"
    )]
    NoTemplate,
    /// The template refused the conversation (its `raise_exception`) or failed on it.
    #[error("the chat template refused the conversation: {0}")]
    Chat(String),
    #[error("tokenizing failed: {0}")]
    Encode(String),
}

/// A special token as tokenizer_config.json gives it: a string, or an AddedToken object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    fn text(self) -> String {
        match self {
            Self::Text(t) | Self::Added { content: t } => t,
        }
    }
}

/// A chat template entry: the template itself, or a list of named ones (`default` used).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ChatTemplate {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// The fields of tokenizer_config.json webaccel uses.
#[derive(Debug, Clone, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<ChatTemplate>,
    #[serde(default)]
    bos_token: Option<SpecialToken>,
    #[serde(default)]
    eos_token: Option<SpecialToken>,
    #[serde(default)]
    pad_token: Option<SpecialToken>,
}

/// One id or a list, as config.json's `eos_token_id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Ids {
    One(u32),
    Many(Vec<u32>),
}

/// The fields of the model's config.json webaccel uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    eos_token_id: Option<Ids>,
    /// The context the model was trained for (an encoder-decoder's decoder:
    /// `max_target_positions`).
    #[serde(default, alias = "max_target_positions")]
    pub max_position_embeddings: Option<u32>,
}

impl ModelConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, TextError> {
        serde_json::from_slice(bytes).map_err(|e| TextError::Config {
            file: "config.json",
            reason: e.to_string(),
        })
    }
}

/// A deployment's tokenizer and chat template.
#[derive(Debug)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    /// The chat template, compiled (`chat`), if the model has one.
    templates: Option<minijinja::Environment<'static>>,
    bos_token: String,
    eos_token: String,
    /// Ids that end a sequence: the tokenizer's eos token and config.json's.
    eos_ids: Vec<u32>,
    pad_id: u32,
}

/// How many prompt tokens seed the streaming decoder, so the first generated token is
/// decoded in context (a SentencePiece word start keeps its space).
const STREAM_CONTEXT: usize = 6;

impl TextCodec {
    /// Reads `tokenizer.json`, and `tokenizer_config.json` and the model's `config.json`
    /// where they exist; `template` replaces the configuration's chat template.
    pub fn new(
        tokenizer_json: &[u8],
        tokenizer_config: Option<&[u8]>,
        model_config: Option<&ModelConfig>,
        template: Option<&str>,
    ) -> Result<Self, TextError> {
        let tokenizer = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let config: TokenizerConfig = match tokenizer_config {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| TextError::Config {
                file: "tokenizer_config.json",
                reason: e.to_string(),
            })?,
            None => TokenizerConfig::default(),
        };
        let source = template.map(str::to_owned).or(match config.chat_template {
            Some(ChatTemplate::One(t)) => Some(t),
            Some(ChatTemplate::Named(list)) => list
                .into_iter()
                .find(|t| t.name == "default")
                .map(|t| t.template),
            None => None,
        });
        let templates = source.map(compile).transpose()?;
        let bos_token = config.bos_token.map(SpecialToken::text).unwrap_or_default();
        let eos_token = config.eos_token.map(SpecialToken::text).unwrap_or_default();
        let mut eos_ids: Vec<u32> = tokenizer.token_to_id(&eos_token).into_iter().collect();
        match model_config.and_then(|c| c.eos_token_id.clone()) {
            Some(Ids::One(id)) => eos_ids.push(id),
            Some(Ids::Many(ids)) => eos_ids.extend(ids),
            None => {}
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let pad_id = config
            .pad_token
            .map(SpecialToken::text)
            .and_then(|t| tokenizer.token_to_id(&t))
            .or_else(|| eos_ids.first().copied())
            .unwrap_or(0);
        Ok(Self {
            tokenizer,
            templates,
            bos_token,
            eos_token,
            eos_ids,
            pad_id,
        })
    }

    /// One past the highest id the tokenizer can produce, its added (special) tokens
    /// included: the logits a model must cover. (Not the count of tokens: an added
    /// token may take an id far past the rest.)
    pub fn vocab_size(&self) -> u32 {
        let highest = self.tokenizer.get_vocab(true).into_values().max();
        highest.map_or(0, |id| id.saturating_add(1))
    }

    /// Ids that end a sequence.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The id under a batched prefill's padding (masked, so any id in range does).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn has_chat_template(&self) -> bool {
        self.templates.is_some()
    }

    /// Plain text, with the tokenizer's special tokens (a BOS where it adds one).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, TextError> {
        self.encode(text, true)
    }

    fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, TextError> {
        self.tokenizer
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TextError::Encode(e.to_string()))
    }

    /// The conversation as the chat template renders it.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        let env = self.templates.as_ref().ok_or(TextError::NoTemplate)?;
        let template = env
            .get_template("chat")
            .map_err(|e| TextError::Template(e.to_string()))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut v = serde_json::json!({"role": m.role, "content": m.content});
                if let Some(name) = &m.name {
                    v["name"] = Value::String(name.clone());
                }
                v
            })
            .collect();
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| TextError::Chat(reason(&e)))
    }

    /// The conversation rendered and tokenized: the template writes the special tokens
    /// (its `bos_token`), so the tokenizer adds none.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TextError> {
        self.encode(&self.render_chat(messages, add_generation_prompt)?, false)
    }

    /// One token's text alone (may be part of a character).
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// The text of `ids`, special tokens left out (an echoed prompt given as ids).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    /// The id of the token spelled `token`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Whether `id` is a special token (left out of the text).
    pub fn is_special(&self, id: u32) -> bool {
        self.tokenizer
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some_and(|t| self.tokenizer.get_added_vocabulary().is_special_token(&t))
    }

    /// A streaming decoder for what follows `prompt`.
    pub fn stream(&self, prompt: &[u32]) -> TextStream {
        let ids: Vec<u32> = prompt[prompt.len().saturating_sub(STREAM_CONTEXT)..].to_vec();
        let prefix = self.tokenizer.decode(&ids, true).unwrap_or_default();
        TextStream {
            prefix_index: ids.len(),
            ids,
            prefix,
        }
    }

    /// The text `id` adds to `stream`: empty while a character is incomplete.
    pub fn step(&self, stream: &mut TextStream, id: u32) -> Result<String, TextError> {
        tokenizers::tokenizer::step_decode_stream(
            &self.tokenizer,
            vec![id],
            true,
            &mut stream.ids,
            &mut stream.prefix,
            &mut stream.prefix_index,
        )
        .map(Option::unwrap_or_default)
        .map_err(|e| TextError::Encode(e.to_string()))
    }
}

/// The state of one sequence's streaming decode (see [`TextCodec::step`]).
#[derive(Debug, Clone)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

/// A template compiled in an environment set up as Hugging Face's.
fn compile(source: String) -> Result<minijinja::Environment<'static>, TextError> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        },
    );
    env.add_template_owned("chat", source)
        .map_err(|e| TextError::Template(reason(&e)))?;
    Ok(env)
}

/// A template error's own words (the template's `raise_exception` message), without the
/// kind minijinja puts before them.
fn reason(e: &minijinja::Error) -> String {
    e.detail().map_or_else(|| e.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests;
