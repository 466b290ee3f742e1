//! The local language model (SmolLM2-135M-Instruct GGUF from `just assets`)
//! as a responder: its tokenizer from the GGUF metadata, a streamed answer,
//! history in the prompt, cancellation.

use std::time::Instant;

use duplex_reply::local::Generator;
use duplex_reply::{Exchange, LocalConfig, LocalLlm, Request, Responder};
use duplex_tests::speech::llm_model;
use tokio_util::sync::CancellationToken;

fn config() -> LocalConfig {
    LocalConfig { model_path: llm_model(), ..LocalConfig::default() }
}

fn request(history: Vec<Exchange>, user: &str) -> Request {
    Request { history, user: user.into(), cancel: CancellationToken::new() }
}

#[test]
fn the_tokenizer_from_the_gguf_round_trips_and_knows_chatml() {
    let g = Generator::load(&config()).unwrap();
    let bpe = g.tokenizer();
    for text in ["Hello, world! It's 42 °C.", "naïve café — ok?", "  two  blanks\nand a line"] {
        assert_eq!(bpe.decode(&bpe.encode(text)), text);
    }
    // Merges apply: common words are one token each, not letters.
    assert!(bpe.encode("Hello, how are you today?").len() <= 8);
    // The prompt starts with <|im_start|> (id 1 in SmolLM2).
    let ids = g.prompt(&[], "Hi");
    assert_eq!(ids[0], 1);
    assert_eq!(bpe.id("<|im_end|>"), Some(2));
}

#[test]
fn it_answers_in_pieces_and_uses_the_history() {
    let mut g = Generator::load(&config()).unwrap();
    let mut pieces = Vec::new();
    let started = Instant::now();
    let n = g
        .generate(&request(vec![], "What is the capital of France?"), &mut |p| {
            pieces.push(p);
            true
        })
        .unwrap();
    let reply = pieces.concat();
    eprintln!("{n} tokens in {:?}: {reply:?}", started.elapsed());
    assert!(pieces.len() > 3, "streamed: {pieces:?}");
    // A 135M model's facts are shaky; what it must do is answer in words,
    // stop by itself, and (greedy) say the same again.
    assert!(reply.split_whitespace().count() >= 3 && n < LocalConfig::default().max_tokens, "{reply:?}");
    let mut again = String::new();
    g.generate(&request(vec![], "What is the capital of France?"), &mut |p| {
        again.push_str(&p);
        true
    })
    .unwrap();
    assert_eq!(again, reply, "greedy decoding from the primed cache is repeatable");

    let history = vec![Exchange { user: "My name is Ada.".into(), assistant: "Nice to meet you, Ada!".into() }];
    let prompt = g.prompt(&history, "What is my name?");
    let without = g.prompt(&[], "What is my name?");
    assert!(prompt.len() > without.len() + 10, "the history is in the prompt");
}

/// The whole reply of `g` to `user` after `history`.
fn answer(g: &mut Generator, history: Vec<Exchange>, user: &str) -> String {
    let mut out = String::new();
    g.generate(&request(history, user), &mut |p| {
        out.push_str(&p);
        true
    })
    .unwrap();
    out
}

#[test]
fn a_conversation_continues_from_the_cache_and_says_the_same() {
    let mut g = Generator::load(&config()).unwrap();
    let first = answer(&mut g, vec![], "My name is Ada. What is a good name for a cat?");
    let history = vec![Exchange {
        user: "My name is Ada. What is a good name for a cat?".into(),
        assistant: first.trim().into(),
    }];
    let started = Instant::now();
    let continued = answer(&mut g, history.clone(), "And for a dog?");
    let continued_time = started.elapsed();
    // A fresh model computes the whole prompt: the same greedy answer.
    let mut fresh = Generator::load(&config()).unwrap();
    let started = Instant::now();
    let whole = answer(&mut fresh, history, "And for a dog?");
    eprintln!("continued {continued_time:?}, whole prompt {:?}: {continued:?}", started.elapsed());
    assert_eq!(continued, whole, "continuing from the cache changes nothing");
    let (computed, prompt) = g.last_prompt();
    let (all, whole_prompt) = fresh.last_prompt();
    assert_eq!(all, whole_prompt, "a fresh model computes it all");
    assert!(computed < prompt / 2, "only the new words were computed: {computed} of {prompt} tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threads_stream_and_stop_when_cancelled() {
    let llm = LocalLlm::start(&config()).unwrap();
    let req = request(vec![], "Tell me a long story about a dragon.");
    let cancel = req.cancel.clone();
    let mut rx = llm.respond(req);
    let first = rx.recv().await.unwrap().unwrap();
    assert!(!first.is_empty());
    cancel.cancel();
    let mut after = 0;
    while rx.recv().await.is_some() {
        after += 1;
    }
    assert!(after <= 2, "{after} pieces after the cancel");
    let err = LocalLlm::start(&LocalConfig { model_path: "/nonexistent.gguf".into(), ..config() }).unwrap_err();
    assert!(err.to_string().contains("just assets"), "{err}");
}
