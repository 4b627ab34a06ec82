//! A minimal owned RGB8 image.

use crate::error::{Error, Result};

/// Smallest image side the renderer and analyser accept.
pub const MIN_SIDE: u32 = 16;
/// Largest image side the renderer and analyser accept.
pub const MAX_SIDE: u32 = 1024;

/// Checks that `side` is within [`MIN_SIDE`]..=[`MAX_SIDE`].
pub fn check_side(side: u32) -> Result<()> {
    if (MIN_SIDE..=MAX_SIDE).contains(&side) {
        Ok(())
    } else {
        Err(Error::ImageSize {
            side,
            min: MIN_SIDE,
            max: MAX_SIDE,
        })
    }
}

/// An RGB8 image stored row-major, three bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl RgbImage {
    /// Wraps a row-major RGB8 buffer; each side must be within
    /// [`MIN_SIDE`]..=[`MAX_SIDE`] and the buffer exactly `width * height * 3` bytes.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        check_side(width)?;
        check_side(height)?;
        let expected = width as usize * height as usize * 3;
        if data.len() != expected {
            return Err(Error::ImageData {
                width,
                height,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// An image of one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Result<Self> {
        let data = rgb.repeat(width as usize * height as usize);
        Self::new(width, height, data)
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The row-major RGB8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The buffer, consuming the image.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// The pixel at `(x, y)`, or `None` outside the image.
    pub fn get(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        self.data.get(i..i + 3).map(|p| [p[0], p[1], p[2]])
    }

    /// Sets the pixel at `(x, y)`; does nothing outside the image.
    pub fn set(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        if x >= self.width || y >= self.height {
            return;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        if let Some(p) = self.data.get_mut(i..i + 3) {
            p.copy_from_slice(&rgb);
        }
    }

    /// Iterates over pixels row by row.
    pub fn pixels(&self) -> impl Iterator<Item = [u8; 3]> + '_ {
        self.data.chunks_exact(3).map(|p| [p[0], p[1], p[2]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_dimensions_and_buffer() {
        assert!(RgbImage::new(16, 16, vec![0; 16 * 16 * 3]).is_ok());
        assert!(matches!(
            RgbImage::new(16, 16, vec![0; 10]),
            Err(Error::ImageData { .. })
        ));
        assert!(matches!(
            RgbImage::new(4, 16, vec![0; 4 * 16 * 3]),
            Err(Error::ImageSize { .. })
        ));
        let mut img = RgbImage::filled(16, 20, [1, 2, 3]).unwrap();
        img.set(15, 19, [9, 9, 9]);
        assert_eq!(img.get(15, 19), Some([9, 9, 9]));
        assert_eq!(img.get(16, 0), None);
        assert_eq!(
            img.pixels().filter(|&p| p == [1, 2, 3]).count(),
            16 * 20 - 1
        );
    }
}
