//! The IDX format of MNIST-style image and label files.

use super::*;

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Reads an IDX file's header: element type code and dimensions.
fn idx_header(path: &Path, bytes: &[u8]) -> Result<(u8, Vec<usize>, usize), DataError> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(format_error(path, "is not an IDX file (bad magic number)"));
    }
    let (kind, dims) = (bytes[2], bytes[3] as usize);
    let header = 4 + 4 * dims;
    if dims == 0 || bytes.len() < header {
        return Err(format_error(path, "has a truncated IDX header"));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|d| be_u32(bytes, 4 + 4 * d) as usize)
        .collect();
    Ok((kind, shape, header))
}

pub(super) fn idx_files(
    images: &Path,
    labels_path: &Path,
    classes: usize,
    fraction: f64,
) -> Result<ClassificationData, DataError> {
    let image_bytes = read(images)?;
    let (kind, shape, header) = idx_header(images, &image_bytes)?;
    if kind != 0x08 {
        return Err(format_error(images, format!("element type 0x{kind:02x} is not supported; batchd reads unsigned-byte (0x08) IDX images")));
    }
    if shape.len() != 3 {
        return Err(format_error(
            images,
            format!(
                "expected 3 dimensions (count, rows, columns), got {}",
                shape.len()
            ),
        ));
    }
    let (count, rows, cols) = (shape[0], shape[1], shape[2]);
    // Checked: a header's sizes can multiply past any address space (and
    // would wrap to a small number unchecked), so they are compared with
    // the file's length before anything is allocated for them.
    let needed = rows
        .checked_mul(cols)
        .and_then(|pixels| pixels.checked_mul(count))
        .and_then(|bytes| bytes.checked_add(header));
    let Some(needed) = needed.filter(|&needed| needed <= image_bytes.len()) else {
        return Err(format_error(
            images,
            format!(
                "is truncated or corrupt: its IDX header promises {count} images of \
                 {rows}x{cols} pixels ({}), the file holds {} bytes",
                needed.map_or_else(
                    || "more bytes than fit in memory".into(),
                    |n| format!("{n} bytes")
                ),
                image_bytes.len()
            ),
        ));
    };
    if count < MIN_SAMPLES || rows == 0 || cols == 0 {
        return Err(format_error(
            images,
            format!(
                "its IDX header promises {count} images of {rows}x{cols} pixels; \
                 a trial needs at least {MIN_SAMPLES} images of at least one pixel"
            ),
        ));
    }
    let label_bytes = read(labels_path)?;
    let (kind, label_shape, label_header) = idx_header(labels_path, &label_bytes)?;
    if kind != 0x08 || label_shape.len() != 1 {
        return Err(format_error(
            labels_path,
            "expected a 1-dimensional unsigned-byte IDX label file",
        ));
    }
    if label_shape[0] != count {
        return Err(format_error(
            labels_path,
            format!(
                "holds {} labels but {} holds {count} images",
                label_shape[0],
                images.display()
            ),
        ));
    }
    // `count` is at most the images file's length here, so this cannot
    // overflow.
    if label_bytes.len() < label_header + count {
        return Err(format_error(
            labels_path,
            format!(
                "is truncated: {} bytes, its IDX header promises {}",
                label_bytes.len(),
                label_header + count
            ),
        ));
    }
    let labels: Vec<i32> = label_bytes[label_header..label_header + count]
        .iter()
        .map(|&b| i32::from(b))
        .collect();
    if let Some((i, bad)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(format_error(
            labels_path,
            format!(
                "label {bad} of image {i} is out of range for {classes} classes (0..{})",
                classes - 1
            ),
        ));
    }
    let mut inputs: Vec<f32> = image_bytes[header..needed]
        .iter()
        .map(|&b| f32::from(b) / 255.0)
        .collect();
    // One mean and scale for all pixels keeps the images' spatial structure.
    let mean = inputs.iter().map(|&v| f64::from(v)).sum::<f64>() / inputs.len().max(1) as f64;
    let std = (inputs
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / inputs.len().max(1) as f64)
        .sqrt();
    inputs
        .iter_mut()
        .for_each(|v| *v = ((f64::from(*v) - mean) / std.max(1e-6)) as f32);
    let (train, valid) = split_indices(count, fraction, count as u64);
    Ok(ClassificationData {
        sample_len: rows * cols,
        image_shape: Some([1, rows, cols]),
        inputs,
        labels,
        train,
        valid,
    })
}
