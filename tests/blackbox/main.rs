//! Black-box tests: start the real `renkei` binary and talk FHIR to it.
