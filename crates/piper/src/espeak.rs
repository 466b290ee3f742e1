//! Phonemization with espeak-ng (Debian `libespeak-ng`), through its C API.
//!
//! espeak-ng keeps global state and is not thread-safe, so every call goes
//! through one process-wide lock; a call takes tens of microseconds.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::Mutex;

use crate::PiperError;

/// `AUDIO_OUTPUT_SYNCHRONOUS`: no audio thread; we only phonemize.
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
/// `espeakCHARS_AUTO`: UTF-8 input.
const CHARS_AUTO: c_int = 0;
/// `espeakPHONEMES_IPA`: IPA output as UTF-8, no separator.
const PHONEMES_IPA: c_int = 0x02;

#[link(name = "espeak-ng")]
unsafe extern "C" {
    fn espeak_Initialize(output: c_int, buflength: c_int, path: *const c_char, options: c_int) -> c_int;
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_TextToPhonemes(textptr: *mut *const c_void, textmode: c_int, phonememode: c_int) -> *const c_char;
}

/// `None` until the first call initialises espeak-ng; then the current voice.
static STATE: Mutex<Option<String>> = Mutex::new(None);

/// IPA phonemes of `text` in `voice` (an espeak voice such as `en-us`), one
/// string per clause espeak finds (punctuation is not returned).
pub fn phonemize(text: &str, voice: &str) -> Result<Vec<String>, PiperError> {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if state.is_none() {
        // SAFETY: called once, under the lock; a null path selects the default data directory.
        let rate = unsafe { espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, std::ptr::null(), 0) };
        if rate <= 0 {
            return Err(PiperError::Espeak("espeak-ng failed to initialise; is espeak-ng-data installed?".into()));
        }
        *state = Some(String::new());
    }
    if state.as_deref() != Some(voice) {
        let name = CString::new(voice).map_err(|_| PiperError::Espeak(format!("bad voice name {voice:?}")))?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call; lock held.
        let rc = unsafe { espeak_SetVoiceByName(name.as_ptr()) };
        if rc != 0 {
            return Err(PiperError::Espeak(format!("espeak-ng has no voice {voice:?}")));
        }
        *state = Some(voice.to_string());
    }
    let input = CString::new(text.replace('\0', " ")).expect("NULs removed");
    let mut ptr: *const c_void = input.as_ptr().cast();
    let mut clauses = Vec::new();
    while !ptr.is_null() {
        // SAFETY: `ptr` points into `input` (alive for this scope) or is advanced by
        // espeak within it; it sets it to null at the end. The returned string is
        // espeak's static buffer, copied before the next call; lock held throughout.
        let out = unsafe { espeak_TextToPhonemes(&mut ptr, CHARS_AUTO, PHONEMES_IPA) };
        if out.is_null() {
            break;
        }
        // SAFETY: non-null, NUL-terminated, valid until the next espeak call.
        let clause = unsafe { CStr::from_ptr(out) }.to_string_lossy().trim().to_string();
        if !clause.is_empty() {
            clauses.push(clause);
        }
    }
    Ok(clauses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_words_become_ipa() {
        let p = phonemize("Hello world", "en-us").unwrap().join(" ");
        assert!(p.contains("həlˈoʊ"), "{p}");
        assert!(phonemize("hi", "no-such-voice").is_err());
        // Switching back works after an error.
        assert!(!phonemize("again", "en-us").unwrap().is_empty());
    }
}
