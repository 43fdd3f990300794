package dev.tflq.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.Color
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import kotlin.math.exp
import kotlin.math.roundToInt

/** Top-1 result of one inference. */
data class Prediction(val label: String, val confidence: Float, val latencyMs: Double)

/**
 * Runs the tflq-converted model from assets/model.tflite on grayscale or RGB images.
 *
 * Works for float32 and integer (int8) input/output: the scale and zero point are read
 * from the tensors, exactly as tflq's desktop validation does. Pixels are scaled to [0, 1],
 * matching tflq's default --normalize=0_1.
 */
class Classifier(context: Context, threads: Int = 4) : AutoCloseable {
    private val interpreter: Interpreter
    val labels: List<String>
    val inputType: DataType
    private val height: Int
    private val width: Int
    private val channels: Int

    init {
        val options = Interpreter.Options().setNumThreads(threads)
        interpreter = Interpreter(loadModel(context, MODEL_ASSET), options)
        labels = context.assets.open(LABELS_ASSET).bufferedReader().readLines().filter { it.isNotBlank() }
        val input = interpreter.getInputTensor(0)
        inputType = input.dataType()
        val shape = input.shape() // [1, H, W, C]
        height = shape[1]
        width = shape[2]
        channels = if (shape.size > 3) shape[3] else 1
    }

    fun classify(bitmap: Bitmap): Prediction {
        val scaled = Bitmap.createScaledBitmap(bitmap, width, height, true)
        val input = toInput(scaled)
        val outTensor = interpreter.getOutputTensor(0)
        val classes = outTensor.shape().last()
        val output = ByteBuffer.allocateDirect(outTensor.numBytes()).order(ByteOrder.nativeOrder())
        val start = System.nanoTime()
        interpreter.run(input, output)
        val latencyMs = (System.nanoTime() - start) / 1e6
        output.rewind()
        val logits = FloatArray(classes) {
            when (outTensor.dataType()) {
                DataType.FLOAT32 -> output.float
                DataType.INT8 -> {
                    val q = outTensor.quantizationParams()
                    (output.get().toInt() - q.zeroPoint) * q.scale
                }
                else -> error("Unsupported output type ${outTensor.dataType()}")
            }
        }
        val probabilities = softmax(logits)
        val best = probabilities.indices.maxByOrNull { probabilities[it] } ?: 0
        return Prediction(labels.getOrElse(best) { "class $best" }, probabilities[best], latencyMs)
    }

    private fun toInput(bitmap: Bitmap): ByteBuffer {
        val tensor = interpreter.getInputTensor(0)
        val buffer = ByteBuffer.allocateDirect(tensor.numBytes()).order(ByteOrder.nativeOrder())
        val q = tensor.quantizationParams()
        for (y in 0 until height) {
            for (x in 0 until width) {
                val pixel = bitmap.getPixel(x, y)
                val rgb = floatArrayOf(Color.red(pixel) / 255f, Color.green(pixel) / 255f, Color.blue(pixel) / 255f)
                val values = if (channels == 1) floatArrayOf(rgb.average().toFloat()) else rgb
                for (v in values) {
                    when (inputType) {
                        DataType.FLOAT32 -> buffer.putFloat(v)
                        DataType.INT8 -> buffer.put((v / q.scale + q.zeroPoint).roundToInt().coerceIn(-128, 127).toByte())
                        else -> error("Unsupported input type $inputType")
                    }
                }
            }
        }
        buffer.rewind()
        return buffer
    }

    /** Times [runs] inferences on [bitmap] after one warm-up; returns milliseconds each. */
    fun benchmark(bitmap: Bitmap, runs: Int): List<Double> {
        classify(bitmap)
        return List(runs) { classify(bitmap).latencyMs }
    }

    override fun close() = interpreter.close()

    companion object {
        const val MODEL_ASSET = "model.tflite"
        const val LABELS_ASSET = "labels.txt"
        const val SAMPLES_DIR = "samples"

        fun loadModel(context: Context, asset: String): MappedByteBuffer {
            context.assets.openFd(asset).use { fd ->
                FileInputStream(fd.fileDescriptor).channel.use { channel ->
                    return channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
                }
            }
        }

        private fun softmax(logits: FloatArray): FloatArray {
            val max = logits.maxOrNull() ?: 0f
            val exps = logits.map { exp((it - max).toDouble()) }
            val sum = exps.sum()
            return FloatArray(logits.size) { (exps[it] / sum).toFloat() }
        }
    }
}
