//! Probabilistic matching of source records (batch): standardisation, blocking, comparison,
//! Fellegi-Sunter weights trained with EM, and clustering.
