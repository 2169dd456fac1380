//! Value normalization shared by indexing and querying, so both sides always agree.

use unicode_normalization::UnicodeNormalization;

/// Folds a string for the default (`starts-with`) and `:contains` string searches:
/// NFKC (full-width/half-width forms: `ﾔﾏﾀﾞ` → `ヤマダ`, `ＡＢＣ` → `ABC`), lowercase with the
/// case folds lowercasing misses (`ß`/`ẞ` → `ss`, final `ς` → `σ`: `Straße` is found by
/// `strasse`), accents removed (`é` → `e`), and hiragana as katakana (`やまだ` → `ヤマダ`: a
/// kana name is typed either way). Kana voicing marks are not accents and are kept (`ダ`
/// stays `ダ`, never `タ`).
pub fn fold(text: &str) -> String {
    let lowered: String = text
        .nfkc()
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .replace('ß', "ss")
        .replace('ς', "σ");
    lowered
        .nfd()
        .filter(|c| !is_accent(*c))
        .nfc()
        .map(hiragana_as_katakana)
        .collect::<String>()
        .split_whitespace()
        .fold(String::new(), |mut folded, word| {
            // Japanese names are written with or without the space between family and given
            // name (`山田 太郎`, `山田太郎`): a space between two Japanese characters is dropped.
            let joins_japanese = folded.chars().next_back().is_some_and(is_japanese)
                && word.chars().next().is_some_and(is_japanese);
            if !folded.is_empty() && !joins_japanese {
                folded.push(' ');
            }
            folded.push_str(word);
            folded
        })
}

/// A kanji, kana or the prolonged sound mark (`ー`), as written in Japanese names.
fn is_japanese(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{30FF}' // hiragana, katakana
        | '\u{3400}'..='\u{4DBF}' // CJK extension A
        | '\u{4E00}'..='\u{9FFF}' // CJK unified ideographs
        | '\u{F900}'..='\u{FAFF}' // CJK compatibility ideographs
        | '\u{3005}' // 々
    )
}

/// The katakana of a hiragana letter (`ぁ`..`ゖ`, and the iteration marks `ゝ` `ゞ`), which
/// Unicode places 0x60 further; anything else as it is.
fn hiragana_as_katakana(c: char) -> char {
    match c {
        '\u{3041}'..='\u{3096}' | '\u{309D}'..='\u{309E}' => {
            char::from_u32(u32::from(c) + 0x60).unwrap_or(c)
        }
        other => other,
    }
}

/// Combining diacritical marks (Latin accents); Japanese (semi-)voiced sound marks
/// U+3099/U+309A are deliberately not in these ranges.
fn is_accent(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}')
}

/// Code systems with several spellings (OIDs in JP Core 1.1.2, URLs in newer JP Core, JP-CLINS
/// and the national services; the JP Core NamingSystems list them) map to one canonical
/// spelling, used when indexing and when querying. Pairs are (alias, canonical).
const SYSTEM_ALIASES: &[(&str, &str)] = &[
    // JLAC10 17-digit laboratory codes (JP_Observation_JLAC10_CodeSystem NamingSystem).
    ("urn:oid:1.2.392.200119.4.504", JLAC10),
    (
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_ObservationLabResultCode_CS",
        JLAC10,
    ),
    // HOT9 drug codes (JP_MedicationCodeHOT9_NamingSystem).
    ("urn:oid:1.2.392.200119.4.403.1", HOT9),
    ("urn:oid:1.2.392.100495.20.2.74", HOT9),
    (
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeHOT9_CS",
        HOT9,
    ),
    // YJ drug codes (domain primer OID and JP_MedicationCodeYJ_NamingSystem).
    ("urn:oid:1.2.392.100495.20.2.73", YJ),
    ("urn:oid:1.2.392.100495.20.1.73", YJ),
    (
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeYJ_CS",
        YJ,
    ),
    // HOT7 and HOT13 drug codes (JP_MedicationCodeHOT7/HOT13_NamingSystem, JP-CLINS).
    ("urn:oid:1.2.392.200119.4.403.2", HOT7),
    (
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeHOT7_CS",
        HOT7,
    ),
    ("urn:oid:1.2.392.200119.4.402.1", HOT13),
    (
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeHOT13_CS",
        HOT13,
    ),
    // 一般名処方マスタ (JP_MedicationCodeCommon_NamingSystem; JP-CLINS names the same
    // master of the MHLW insurance bureau MedicationGeneralOrderCode): a generic-name
    // prescription matched across facilities is the duplicate check the network exists for.
    (
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeCommon_CS",
        GENERIC_NAME,
    ),
    (
        "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationGeneralOrderCode",
        GENERIC_NAME,
    ),
    // MHLW ICD-10 (NamingSystem mhlw-icd10, JP-CLINS).
    (
        "http://www.mhlw.go.jp/toukei/sippei/2013/ICD10-JP",
        ICD10_MHLW,
    ),
    // Prefecture numbers (JP_PrefectureNumber_NamingSystem; JP-CLINS's MHLW URL).
    ("urn:oid:1.2.392.100495.20.3.21", PREFECTURE),
    (
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_PrefectureNumber_CS",
        PREFECTURE,
    ),
    // Vital-sign codes (JP_ObservationVitalSignsCode_NamingSystem, JP-CLINS).
    ("urn:oid:1.2.392.200119.4.804", VITAL_SIGNS),
    (
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_ObservationVitalSignsCode_CS",
        VITAL_SIGNS,
    ),
    // MERIT-9 units (JP_MedicationUnitMERIT9_NamingSystem; JP-CLINS URL).
    ("urn:oid:1.2.392.100495.20.2.101", MERIT9),
    // HL7 v3 code systems: their OIDs (HL7 v2/CDA-era data, and many Japanese systems) and
    // the DSTU2-era URLs. A security label or purpose written either way is the same code:
    // a consent's deny for `urn:oid:2.16.840.1.113883.5.4|PSY` must hide data labelled
    // with the URL spelling.
    ("urn:oid:2.16.840.1.113883.5.4", V3_ACT_CODE),
    ("http://hl7.org/fhir/v3/ActCode", V3_ACT_CODE),
    ("urn:oid:2.16.840.1.113883.5.25", V3_CONFIDENTIALITY),
    ("http://hl7.org/fhir/v3/Confidentiality", V3_CONFIDENTIALITY),
    ("urn:oid:2.16.840.1.113883.5.8", V3_ACT_REASON),
    ("http://hl7.org/fhir/v3/ActReason", V3_ACT_REASON),
    ("urn:oid:2.16.840.1.113883.5.1063", V3_OBSERVATION_VALUE),
    (
        "http://hl7.org/fhir/v3/ObservationValue",
        V3_OBSERVATION_VALUE,
    ),
    (
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationUnitMERIT9_CS",
        MERIT9,
    ),
];

const JLAC10: &str = "http://medis.or.jp/CodeSystem/master-JLAC10-17digits";
const HOT9: &str = "http://medis.or.jp/CodeSystem/master-HOT9";
const YJ: &str = "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code";
const GENERIC_NAME: &str = "urn:oid:1.2.392.100495.20.1.81";
const HOT7: &str = "http://medis.or.jp/CodeSystem/master-HOT7";
const HOT13: &str = "http://medis.or.jp/CodeSystem/master-HOT13";
const ICD10_MHLW: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/ICD10-2013-full";
const PREFECTURE: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/PrefectureNo-2digits";
const VITAL_SIGNS: &str = "http://medis.or.jp/CodeSystem/master-nursingObservationKeyCode";
const MERIT9: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUnitMERIT9Code";
const V3_ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const V3_CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const V3_ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const V3_OBSERVATION_VALUE: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// The canonical spelling of a code system URI (the URL form when one exists).
pub fn canonical_system(system: &str) -> &str {
    SYSTEM_ALIASES
        .iter()
        .find(|(alias, _)| *alias == system)
        .map_or(system, |(_, canonical)| canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_width_case_and_accents() {
        assert_eq!(fold("ﾔﾏﾀﾞ"), "ヤマダ");
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("STRASSE"), fold("Straẞe"));
        assert_eq!(fold("ΟΔΟΣ"), fold("οδος"));
        assert_eq!(fold("やまだ"), "ヤマダ");
        assert_eq!(fold("山田 太郎"), "山田太郎");
        assert_eq!(fold("山田\u{3000}太郎"), "山田太郎");
        assert_eq!(fold("ヤマダ タロウ"), "ヤマダタロウ");
        assert_eq!(fold("Yamada  Taro"), "yamada taro");
        assert_eq!(fold("山田 Taro"), "山田 taro");
        assert_eq!(fold("ゆうこ"), "ユウコ");
        assert_eq!(fold("が"), fold("ガ"));
        assert_eq!(fold("ヤマダ"), "ヤマダ");
        assert_eq!(fold("山田"), "山田");
        assert_eq!(fold("ＹＡＭＡＤＡ"), "yamada");
        assert_eq!(fold("Chalmers"), "chalmers");
        assert_eq!(fold("Zoë  Müller"), "zoe muller");
        assert_eq!(fold("ﾊﾟﾝ"), "パン");
        assert!(fold("ヤマダ　タロウ").starts_with(&fold("ﾔﾏﾀﾞ")));
    }

    #[test]
    fn canonicalizes_code_system_spellings() {
        assert_eq!(
            canonical_system("urn:oid:2.16.840.1.113883.5.4"),
            "http://terminology.hl7.org/CodeSystem/v3-ActCode"
        );
        assert_eq!(
            canonical_system("urn:oid:1.2.392.200119.4.504"),
            "http://medis.or.jp/CodeSystem/master-JLAC10-17digits"
        );
        assert_eq!(
            canonical_system("urn:oid:1.2.392.200119.4.403.1"),
            "http://medis.or.jp/CodeSystem/master-HOT9"
        );
        assert_eq!(
            canonical_system("urn:oid:1.2.392.100495.20.2.73"),
            "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code"
        );
        assert_eq!(canonical_system("http://loinc.org"), "http://loinc.org");
    }
}
