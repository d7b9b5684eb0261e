//! The text form of each enum: one mapping per type, and no default for unknown text.
//!
//! Every such enum is declared through [`text_enum!`](crate::text_enum), which derives
//! `strum`'s `Display`, `EnumString` (its `FromStr`), `IntoStaticStr`, `VariantNames` and
//! `VariantArray` under one case rule. Where the enum is also JSON, serde's `rename_all` states
//! the same rule, and a test per enum checks that both give the same text for every variant.
//! Text that names no variant is an [`UnknownText`], never a guess.

use strum::VariantNames;

/// An enum with exactly one text form per variant.
pub trait TextEnum: Copy + VariantNames + Into<&'static str> {
    /// What a value of it is called in messages, e.g. `algorithm`.
    const WHAT: &'static str;

    /// The variant's text, as in JSON and in the database.
    fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Text that names no variant of an enum (from input, a file or a database row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{text}` (expected one of {})", .expected.join(", "))]
pub struct UnknownText {
    /// What was being read, e.g. `algorithm`.
    pub what: &'static str,
    /// The text that matched nothing.
    pub text: String,
    /// Every text that would have been accepted.
    pub expected: &'static [&'static str],
}

impl UnknownText {
    /// `text` names no `T`.
    pub fn of<T: TextEnum>(text: &str) -> UnknownText {
        UnknownText {
            what: T::WHAT,
            text: text.to_string(),
            expected: T::VARIANTS,
        }
    }
}

/// Declares an enum with one text form per variant: `text_enum! { ("what", "case") ... }`
/// before the enum's own attributes, where `case` is a `strum` `serialize_all` rule. The
/// crate using it must depend on `strum` (its derives name `::strum`).
#[macro_export]
macro_rules! text_enum {
    (($what:literal, $case:literal) $(#[$meta:meta])* $vis:vis enum $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(
            ::strum::Display,
            ::strum::EnumString,
            ::strum::IntoStaticStr,
            ::strum::VariantNames,
            ::strum::VariantArray,
        )]
        #[strum(
            serialize_all = $case,
            parse_err_ty = $crate::text::UnknownText,
            parse_err_fn = $crate::text::UnknownText::of::<$name>
        )]
        $vis enum $name { $($body)* }

        impl $crate::text::TextEnum for $name {
            const WHAT: &'static str = $what;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Visibility, WorkerState};
    use crate::{Algorithm, ErrorKind, Role, Stream};
    use std::fmt::Debug;
    use std::str::FromStr;
    use strum::VariantArray;

    /// Every variant goes to text and back; text in another case and made-up text are refused.
    fn round_trip<T>() -> Vec<&'static str>
    where
        T: TextEnum + VariantArray + FromStr<Err = UnknownText> + std::fmt::Display,
        T: Debug + PartialEq,
    {
        let mut texts = Vec::new();
        for &v in <T as VariantArray>::VARIANTS {
            let text = v.as_str();
            assert_eq!(v.to_string(), text);
            assert_eq!(text.parse::<T>(), Ok(v));
            let other_case = if text == text.to_uppercase() {
                text.to_lowercase()
            } else {
                text.to_uppercase()
            };
            assert_eq!(
                other_case.parse::<T>(),
                Err(UnknownText::of::<T>(&other_case))
            );
            texts.push(text);
        }
        assert_eq!(texts, <T as VariantNames>::VARIANTS);
        for bad in ["", "nonsense", " roundrobin"] {
            let err = bad.parse::<T>().unwrap_err();
            assert_eq!((err.what, err.text.as_str()), (T::WHAT, bad));
        }
        texts
    }

    /// The same for an enum that is JSON too: serde writes and reads the same text.
    fn round_trip_json<T>() -> Vec<&'static str>
    where
        T: TextEnum + VariantArray + FromStr<Err = UnknownText> + std::fmt::Display,
        T: Debug + PartialEq + serde::Serialize + serde::de::DeserializeOwned,
    {
        let texts = round_trip::<T>();
        for (&v, text) in <T as VariantArray>::VARIANTS.iter().zip(&texts) {
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v);
        }
        assert!(serde_json::from_str::<T>("\"nonsense\"").is_err());
        texts
    }

    #[test]
    fn every_enum_has_one_text_per_variant() {
        assert_eq!(
            round_trip_json::<Algorithm>(),
            ["roundrobin", "mirror", "serial"]
        );
        assert_eq!(round_trip_json::<Stream>(), ["stdout", "stderr"]);
        assert_eq!(round_trip_json::<Visibility>(), ["local", "team", "public"]);
        assert_eq!(round_trip_json::<WorkerState>(), ["ONLINE", "DISCONNECTED"]);
        assert_eq!(round_trip::<Role>(), ["client", "worker"]);
        let kinds = round_trip_json::<ErrorKind>();
        assert_eq!(kinds[0], "NoSuchService");
        assert_eq!(kinds.len(), 30);
        assert_eq!(kinds[15], "Revoked");
        assert_eq!(kinds[16..18], ["PluginCrashed", "PluginProtocol"]);
        assert_eq!(
            kinds[18..22],
            ["Offline", "Skipped", "NoResponse", "Detached"]
        );
        assert_eq!(
            kinds[22..],
            [
                "TooManyRequests",
                "RateLimited",
                "TooManyConnections",
                "OutputLimit",
                "ShuttingDown",
                "Retried",
                "Stale",
                "BrokerLost"
            ]
        );
    }

    #[test]
    fn unknown_text_says_what_was_expected() {
        let err = "random".parse::<Algorithm>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown algorithm `random` (expected one of roundrobin, mirror, serial)"
        );
        let err = "everyone".parse::<Visibility>().unwrap_err();
        assert_eq!(err, UnknownText::of::<Visibility>("everyone"));
        assert_eq!(err.expected, ["local", "team", "public"]);
    }
}
